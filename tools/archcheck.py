"""Measure the import structure of a Python package: cycles (module- and function-level imports),
function-level intra-package imports, imports of another module's underscore names, module sizes.
Usage, from the project root: python tools/archcheck.py . dlm_jax"""
import ast, os, sys

root, pkg = sys.argv[1], sys.argv[2]
mods = {}
for d, _, fs in os.walk(os.path.join(root, pkg)):
    for f in fs:
        if f.endswith('.py'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3].replace(os.sep, '.')
            mods[rel[:-9] if rel.endswith('.__init__') else rel] = p

def resolve(cur, node):
    if isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
            parts = cur.split('.')
            is_pkg = mods[cur].endswith('__init__.py')
            parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
            base = '.'.join(parts + ([base] if base else []))
        out = []
        for a in node.names:
            full = f'{base}.{a.name}'
            out.append((full if full in mods else base, a.name))
        return out
    return [(a.name, None) for a in node.names]

edges, inner, private, sizes = {}, [], [], {}
for m, p in mods.items():
    src = open(p, encoding='utf-8').read()
    sizes[m] = src.count('\n')
    tree = ast.parse(src)
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target, name in resolve(m, node):
                t = target
                while t and t not in mods:
                    t = t.rpartition('.')[0]
                if not t or not t.startswith(pkg) or t == m:
                    continue
                edges.setdefault(m, set()).add(t)
                if id(node) not in top and not any(id(node) == id(x) for x in ast.walk(tree) if False):
                    # an import not at module level (inside a function, class or if/try block)
                    inner.append((m, t, node.lineno))
                if name and name.startswith('_') and not name.startswith('__'):
                    private.append((m, t, name, node.lineno))
# top-level try/if blocks hold imports too: count only those inside functions as "inner"
def func_imports(m):
    tree = ast.parse(open(mods[m], encoding='utf-8').read())
    out = []
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(f):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    for target, _ in resolve(m, n):
                        t = target
                        while t and t not in mods:
                            t = t.rpartition('.')[0]
                        if t and t.startswith(pkg) and t != m:
                            out.append((m, t, n.lineno))
    return out
inner = sorted(set(x for m in mods for x in func_imports(m)))
# attribute use of another module's underscore name: `from dlm_jax import train; train._atomic_json(...)`
for m, p in mods.items():
    tree = ast.parse(open(p, encoding='utf-8').read())
    alias = {}
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for (target, name), a in zip(resolve(m, n), n.names):
                if target in mods and target.startswith(pkg) and target != m:
                    alias[a.asname or (name if name else a.name.split('.')[0])] = target
    for n in ast.walk(tree):
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in alias
                and n.attr.startswith('_') and not n.attr.startswith('__')):
            private.append((m, alias[n.value.id], n.attr, n.lineno))
private = sorted(set(private))
# strongly connected components (Tarjan)
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in mods:
    if v not in index: strong(v)
big = sorted(((n, m) for m, n in sizes.items() if n > 400), reverse=True)
main_lines = sizes.get(f'{pkg}.main', 0)
print(f'modules {len(mods)}; cycles {len(sccs)}: {sccs}')
print(f'function-level package imports {len(inner)}: {inner[:12]}')
print(f'underscore names imported across modules {len(private)}: {private[:12]}')
print(f'modules over 400 lines: {big}; main.py {main_lines} lines')
ok = not sccs and not inner and not private and not big and main_lines <= 60
print(f'architecture: {len(sccs)} cycles, {len(inner)} function-level imports, {len(private)} private imports, '
      f'{len(big)} modules > 400 lines, main {main_lines} lines ({"ok" if ok else "short of the targets"})')
sys.exit(0 if ok else 1)
