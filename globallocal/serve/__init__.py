"""``globallocal serve``: a local web page (Gradio) on the same :class:`~globallocal.Segmenter` the CLI uses.

Gradio is an optional extra (``pip install 'globallocal[demo]'``); this
package imports it only when the page is built.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, first_line
from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .engine import Engine

# The engine holds the models (torch): imported on first use, so serve's options are checked without it.
__getattr__ = lazy_exports(__name__, {"Engine": ".engine"})

__all__ = ["Engine", "check_port", "example_photos", "require_gradio", "serve"]

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MAX_UPLOAD = "256mb"
"""Gradio refuses bigger uploads outright; the megapixel limit applies below it."""


def require_gradio() -> None:
    """Refuse early, in one line, when the optional web dependencies are missing."""
    if importlib.util.find_spec("gradio") is None:
        raise InputError("serve needs Gradio, which is not installed; install it with: "
                         "pip install 'globallocal[demo]' (make install does)")


def example_photos(folder: Path | None = None) -> list[Path]:
    """The photos offered as examples: ``folder``'s, else the repository's examples/ when present."""
    folder = folder or REPO_EXAMPLES
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
                  and not path.name.startswith("mask"))


def _cannot_listen(host: str, port: int, reason: str) -> InputError:
    return InputError(f"cannot listen on {host}:{port} ({reason}); pick another --port or --host")


def check_port(host: str, port: int) -> None:
    """Refuse, in one line and before the models load, an address this computer cannot serve on (a port in use)."""
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise _cannot_listen(host, port, first_line(error)) from None
    family, kind, protocol, _, address = addresses[0]
    with socket.socket(family, kind, protocol) as probe:
        # As the web server does, so a port left in TIME_WAIT by a stopped server is not taken for busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise _cannot_listen(host, port, error.strerror or first_line(error)) from None


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 7860, examples: Sequence[Path] = (),
          proposals: str = "freesolo", top_k: int = 8) -> None:
    """Build the page and serve it until interrupted: one request through the models at a time, no share link."""
    from .page import Page

    page = Page(engine, examples, proposals, top_k)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"globallocal serve: http://{shown_host}:{port} (Ctrl+C stops it)", flush=True)
    try:
        page.blocks.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, share=False, ssr_mode=False, show_error=False, quiet=True,
            max_file_size=MAX_UPLOAD, allowed_paths=sorted({str(Path(path).parent) for path in examples}),
        )
    except OSError as error:  # Gradio's "Cannot find empty port", or an address this computer does not have
        raise _cannot_listen(host, port, first_line(error)) from None
    finally:
        page.close()
