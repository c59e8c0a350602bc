"""``python -m flywheel.config``: rewrite README.md's configuration reference from the config models."""
import re
from pathlib import Path

from flywheel.config import render_reference

readme = Path(__file__).resolve().parents[2] / "README.md"
text = readme.read_text()
block = f"<!-- config-reference:start -->\n{render_reference().strip()}\n<!-- config-reference:end -->"
text = re.sub(r"<!-- config-reference:start -->.*<!-- config-reference:end -->", lambda _: block, text, flags=re.S)
readme.write_text(text)
print(f"updated {readme}")
