"""dlm_jax: autoregressive, masked-diffusion and dual language models in JAX/Flax."""
import setuptools

INSTALL = [
    'jax>=0.7.0',
    'flax>=0.11.0',
    'optax>=0.2.4',
    'orbax-checkpoint>=0.11.0',
    'grain>=0.2.12',
    'ml-collections>=1.0.0',
    'tensorflow-datasets>=4.9.9',  # TensorFlow itself is not required.
    'array-record>=0.8.1',
    'tokenizers>=0.20.0',
    'tensorboardX>=2.6',
    'tqdm>=4.66',
    'numpy>=1.26',
    'absl-py>=2.1',
]

setuptools.setup(
    name='dlm_jax',
    version='0.1.0',
    description='Autoregressive, masked-diffusion and dual language models in JAX/Flax',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['dlm_jax', 'dlm_jax.*']),
    package_data={'dlm_jax.data': ['corpus/*.xz', 'corpus/*.json']},
    install_requires=INSTALL,
    extras_require={
        'test': ['pytest>=8.0', 'rdata>=0.11'],
        'gpu': ['jax[cuda12]>=0.7.0'],
        'tpu': ['jax[tpu]>=0.7.0'],
    },
)
