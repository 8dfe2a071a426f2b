"""bundling_ml must stay free of Django (and cheap: no TensorFlow at import)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_bundling_ml_does_not_import_django_or_tensorflow():
    code = (
        "import sys, bundling_ml, bundling_ml.data, bundling_ml.stats, bundling_ml.features, "
        "bundling_ml.candidates, bundling_ml.evaluation, bundling_ml.pricing, bundling_ml.artifacts, "
        "bundling_ml.ranking, bundling_ml.backtest, bundling_ml.pipeline, bundling_ml.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'tensorflow', 'keras'))\n"
        "print(','.join(bad))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
