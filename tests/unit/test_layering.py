"""The edge, the stores and the actors stand below the services: none of them imports a service."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nexus_ray

ROOT = Path(nexus_ray.__file__).parent
LOWER = ("edge", "stores", "actors", "runtime/embedded.py", "config.py", "exceptions.py", "logs.py", "catalog.py")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_lower_layer_module_names_a_service():
    files = [f for part in LOWER for f in ([ROOT / part] if part.endswith(".py") else (ROOT / part).rglob("*.py"))]
    assert len(files) > 15
    offenders = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f) if m.startswith("nexus_ray.deployments"))
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_importing_the_edge_loads_no_service():
    code = (
        "import sys, json\n"
        "import nexus_ray.edge.security, nexus_ray.edge.tokens, nexus_ray.edge.websocket, nexus_ray.edge.apikeys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('nexus_ray.deployments'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
