"""Doc-site hook: pages link the repository's result files (`../export/...`, `../bench/...`) as they sit in
the checkout; the site carries those files and the links are rewritten to where the site puts them."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("export", "bench", "examples")  # folders whose pictures and reports the pages show
KINDS = {".md", ".png", ".json", ".jpeg", ".jpg"}
ROOT_PAGES = ("ARCHITECTURE.md",)  # beside README in the checkout; README itself is the site's index page
LINK = re.compile(r"(\]\()\.\./((?:%s)/[^)\s]+|%s)" % ("|".join(SHARED), "|".join(map(re.escape, ROOT_PAGES))))
README = re.compile(r"(\]\()\.\./README\.md")


def on_files(files, config):
    for top in SHARED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix.lower() in KINDS:
                rel = path.relative_to(ROOT).as_posix()
                files.append(File(rel, src_dir=str(ROOT), dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    for name in ROOT_PAGES:
        files.append(File(name, src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")
    markdown = README.sub(lambda m: m.group(1) + "../" * depth + "index.md", markdown)
    return LINK.sub(lambda m: m.group(1) + "../" * depth + m.group(2), markdown)
