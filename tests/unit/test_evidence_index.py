"""results/evidence/README.md names every folder of evidence, each under its GPU's section, and every folder it names
exists: the index is how a reader finds the measurement behind a figure."""
import re
from pathlib import Path

import pytest

EVIDENCE = Path(__file__).resolve().parents[2] / "results" / "evidence"
INDEX = (EVIDENCE / "README.md").read_text()


def sections() -> dict[str, str]:
    """Each ``## NAME/`` section's text, by NAME."""
    parts = re.split(r"^## ([\w.-]+)/\s*$", INDEX, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("gpu", sorted(p.name for p in EVIDENCE.iterdir() if p.is_dir()))
def test_every_folder_is_named_under_its_section(gpu):
    text = sections().get(gpu)
    assert text is not None, f"results/evidence/README.md has no '## {gpu}/' section"
    folders = sorted(p.name for p in (EVIDENCE / gpu).iterdir() if p.is_dir())
    assert [f for f in folders if f"`{f}/" not in text] == []


def test_every_folder_a_row_names_exists():
    missing = []
    for gpu, text in sections().items():
        for name in re.findall(r"^\| `([\w.-]+)/", text, flags=re.M):
            if not (EVIDENCE / gpu / name).is_dir():
                missing.append(f"{gpu}/{name}")
    assert missing == []
