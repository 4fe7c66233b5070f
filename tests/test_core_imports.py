import subprocess
import sys


def test_core_imports_neither_ray_nor_mlflow():
    code = ("import pkgutil, importlib, sys, fsd\n"
            "for m in pkgutil.walk_packages(fsd.__path__, 'fsd.'):\n"
            "    if not m.name.startswith('fsd.tuning'): importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
