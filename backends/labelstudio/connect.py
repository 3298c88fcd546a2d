"""Wire a running Label Studio to a running polypseg backend: a polyp project on a folder of
images (local-files storage, as Label Studio sees the folder) with the backend connected.
docker compose runs it once after both are up; running it again changes nothing.

    python -m backends.labelstudio.connect --label-studio http://label-studio:8080 \\
        --backend http://polypseg:9090 --images /data/images/polyps [--title Polyps]

The token comes from LABEL_STUDIO_API_KEY; the backend's basic-auth credentials, where it has
them, from BASIC_AUTH_USER and BASIC_AUTH_PASS (as the backend reads them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from backends.labelstudio import launcher

log = logging.getLogger("polypseg.connect")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label-studio", required=True, help="Label Studio's URL")
    parser.add_argument("--backend", required=True, help="the backend's URL as Label Studio reaches it")
    parser.add_argument(
        "--images", type=Path, required=True, help="the image folder's path inside Label Studio"
    )
    parser.add_argument("--title", default="Polyps")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for both servers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # label-studio-sdk's request log
    token = os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not token:
        log.error("set LABEL_STUDIO_API_KEY")
        return 2
    try:
        launcher.wait_for(args.label_studio.rstrip("/") + "/health", None, args.timeout, None)
        launcher.wait_for(args.backend.rstrip("/") + "/health", None, args.timeout, None)
    except launcher.ServerFailed as exc:
        log.error("%s", exc)
        return 1
    ls = launcher.client(args.label_studio, token)
    config = (launcher.CONFIGS / "polyp-image.xml").read_text()
    project = launcher.polyp_project(ls, args.title, config, preannotate=True)
    tasks = launcher.add_image_folder(ls, project, args.images)
    launcher.connect_backend(ls, project, args.backend, basic_auth=launcher.basic_auth_from_env())
    log.info("project %d (%s): %d images, backend %s connected", project, args.title, tasks, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
