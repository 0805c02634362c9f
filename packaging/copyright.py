"""Print debian/copyright (DEP-5) for ipspool and what its virtualenv bundles.

The licence of each bundled distribution is read from its own metadata, and
its licence files are listed where they are installed, so the file stays
true when a dependency changes.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

MIT = """\
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.
"""


def _license(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return str(expression)
    text = meta.get("License") or ""
    if text and "\n" not in text and len(text) < 60:
        return text
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return " or ".join(classifiers) or "see the licence files"


def _license_files(dist: metadata.Distribution, prefix: str) -> list[str]:
    found = []
    for file in dist.files or []:
        name = file.name.lower()
        if name.startswith(("license", "licence", "copying", "notice", "authors")):
            found.append(str(Path(prefix) / Path(str(dist.locate_file(file))).relative_to(prefix)))
    return sorted(found)


def main(venv: str, prefix: str) -> str:
    lines = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        "Upstream-Name: ipspool",
        "",
        "Files: *",
        "Copyright: 2026 the ipspool authors",
        "License: MIT",
        "",
    ]
    site = sorted(Path(venv).glob("lib/python3*/site-packages"))
    dists = sorted(metadata.distributions(path=[str(p) for p in site]), key=lambda d: d.metadata["Name"].lower())
    for dist in dists:
        name = dist.metadata["Name"]
        if name.lower() == "ipspool":
            continue
        files = _license_files(dist, venv)
        rel = str(Path(prefix) / Path(str(dist.locate_file(""))).relative_to(venv))
        lines += [
            f"Files: {rel}/{name.replace('-', '_').lower()}*",
            f"Comment: {name} {dist.version}, bundled in the virtualenv",
            " (PyPI distribution; licence text: "
            + (", ".join(f.replace(venv, prefix) for f in files) or "in its metadata") + ")",
            f"Copyright: {name} authors",
            f"License: {_license(dist)}",
            "",
        ]
    lines.append(MIT.rstrip("\n"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1], sys.argv[2]))
