"""The Gradio page of ``globallocal serve`` and its callbacks.

The callbacks are methods of :class:`Page` returning ``{component: value}``
updates, so tests call them directly, without a browser. Any error becomes
one sentence in the status line; the server carries on.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..errors import GlobalLocalError, first_line
from .engine import PROPOSAL_LABELS, Answer, Engine, ImageSession, image_key
from .views import display_overlay, display_photo, ranked_gallery, summary, timing_line, write_downloads

log = logging.getLogger("globallocal.serve")
MAX_WEIGHTS = 4
"""Sliders on the page; a method shows as many as it has re-ranking weights."""


@dataclass
class SessionView:
    """One browser session's state: its photo's features, phrases and latest answer."""

    image: ImageSession
    phrases: list[str]
    answer: Answer
    downloads: Path


def _readable_errors(callback):
    """Errors become the status line: the user's as they are, the server's as a short note (logged in full)."""

    @functools.wraps(callback)
    def wrapper(self: Page, *args):
        try:
            return callback(self, *args)
        except GlobalLocalError as error:
            return {self.status: f"Error: {error}"}
        except Exception as error:  # the server keeps running; the details go to its log
            log.exception("%s failed", callback.__name__)
            return {self.status: f"Error: the server hit an unexpected problem ({type(error).__name__}: "
                                 f"{first_line(error)}); the details are in its log"}

    return wrapper


class Page:
    """The page's components and what happens when they are used."""

    def __init__(self, engine: Engine, examples: Sequence[Path] = (), proposals: str = "freesolo",
                 top_k: int = 8) -> None:
        self.engine = engine
        self.examples = [str(path) for path in examples]
        self.default_proposals = proposals
        self.top_k = top_k
        self.downloads_root = Path(tempfile.mkdtemp(prefix="globallocal-serve-"))
        self.blocks = self._build()

    def close(self) -> None:
        shutil.rmtree(self.downloads_root, ignore_errors=True)

    # -- layout -----------------------------------------------------------------

    def _build(self) -> gr.Blocks:
        with gr.Blocks(title="globallocal", analytics_enabled=False) as blocks:
            self.session = gr.State(None)
            gr.Markdown("## globallocal: find the object a phrase refers to\nUpload a photo, type one phrase "
                        "per line, press **Segment**. The sliders re-rank at once from the photo's cached features.")
            with gr.Row():
                with gr.Column(scale=2):
                    self.photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo")
                    if self.examples:
                        gr.Examples([[path] for path in self.examples], inputs=[self.photo], label="Example photos")
                    self.phrases = gr.Textbox(label="Phrases, one per line", lines=3, elem_id="phrases",
                                              placeholder="the man on the right")
                    self.run = gr.Button("Segment", variant="primary", elem_id="segment")
                    self.status = gr.Markdown(elem_id="status")
                    self.sliders = [
                        gr.Slider(0.0, 1.0, step=0.01, visible=False, elem_id=f"weight{i}")
                        for i in range(MAX_WEIGHTS)
                    ]
                    self.source = gr.Radio([(label, name) for name, label in PROPOSAL_LABELS.items()],
                                           value=self.default_proposals, label="Mask proposals", elem_id="source")
                    self.masks = gr.File(label="Uploaded masks: one PNG per mask, or a COCO RLE .json",
                                         file_count="multiple", file_types=[".png", ".json"], type="filepath",
                                         elem_id="masks")
                    self.method = gr.Dropdown(list(self.engine.methods), value=self.engine.default_method,
                                              label="Method", elem_id="method")
                with gr.Column(scale=3):
                    self.overlay = gr.Image(label="Chosen mask", type="numpy", interactive=False, elem_id="overlay")
                    self.summary = gr.Markdown(elem_id="summary")
                    self.timing = gr.Markdown(elem_id="timing")
                    self.shown = gr.Dropdown([], label="Phrase shown", visible=False, elem_id="shown")
                    self.gallery = gr.Gallery(label="Top proposals, best first (score = global + local part)",
                                              columns=4, object_fit="contain", height="auto",
                                              elem_id="ranked")
                    self.downloads = gr.File(label="Downloads: mask PNG and JSON", file_count="multiple",
                                             interactive=False, elem_id="downloads")
            answer_outputs = [self.session, self.overlay, self.summary, self.shown, self.gallery, self.timing,
                              self.downloads, self.status]
            inputs = [self.session, self.photo, self.phrases, self.source, self.masks, self.method, *self.sliders]
            self.run.click(self.segment, inputs, answer_outputs)
            self.phrases.submit(self.segment, inputs, answer_outputs)
            for slider in self.sliders:
                slider.change(self.rerank, [self.session, self.method, *self.sliders], answer_outputs,
                              trigger_mode="always_last", show_progress="hidden")
            self.shown.input(self.show, [self.session, self.shown], answer_outputs, show_progress="hidden")
            self.photo.change(self.preview, [self.photo], [self.session, self.overlay, *answer_outputs[2:]])
            self.method.change(self.choose_method, [self.method], [*self.sliders, self.status])
            blocks.load(self.choose_method, [self.method], [*self.sliders, self.status])
        return blocks

    # -- callbacks --------------------------------------------------------------

    def _weights(self, method: str, values: Sequence[float]) -> dict[str, float]:
        names = list(self.engine.weights(method))[:MAX_WEIGHTS]
        return {name: float(value) for name, value in zip(names, values)}

    @_readable_errors
    def choose_method(self, method: str) -> dict:
        """Sliders for the method's re-ranking weights, at their served values."""
        weights = list(self.engine.weights(method).items())[:MAX_WEIGHTS]
        updates = {}
        for i, slider in enumerate(self.sliders):
            if i < len(weights):
                name, value = weights[i]
                updates[slider] = gr.update(visible=True, label=name, value=value, maximum=max(1.0, value))
            else:
                updates[slider] = gr.update(visible=False)
        updates[self.status] = ""
        return updates

    @_readable_errors
    def preview(self, photo: str | None) -> dict:
        """A new photo: show it (or say why it cannot be used) and forget the previous photo's features."""
        cleared = {self.session: None, self.summary: "", self.shown: gr.update(choices=[], visible=False),
                   self.gallery: [], self.timing: "", self.downloads: None, self.status: ""}
        if not photo:
            return {**cleared, self.overlay: None}
        image = self.engine.open_photo(photo)
        return {**cleared, self.overlay: display_photo(image)}

    @_readable_errors
    def segment(self, view: SessionView | None, photo: str | None, phrases: str, source: str,
                mask_files: list[str] | None, method: str, *weights: float) -> dict:
        """The Segment button: features of the photo (unless this session has them), then the answers."""
        if not photo:
            return {self.status: "Error: upload a photo or pick an example first"}
        mask_files = list(mask_files or [])
        key = image_key(photo, source, mask_files, method)
        image = view.image if view is not None and view.image.key == key else None
        tower_ran = image is None
        if image is None:
            image = self.engine.set_image(photo, source, mask_files, method)
        lines = phrases.splitlines() if phrases else []
        answer = self.engine.answer(image, lines, self._weights(method, weights))
        return self._render(view, image, [r.phrase for r in answer.results], answer, 0, tower_ran)

    @_readable_errors
    def rerank(self, view: SessionView | None, method: str, *weights: float) -> dict:
        """A slider moved: the same phrases under the new weights, from the cached features."""
        if view is None or view.image.method != method:
            return self._unchanged()  # nothing answered yet (or for another method): nothing to re-rank
        answer = self.engine.answer(view.image, view.phrases, self._weights(method, weights))
        return self._render(view, view.image, view.phrases, answer, 0, tower_ran=False)

    @_readable_errors
    def show(self, view: SessionView | None, phrase: str) -> dict:
        """Another phrase picked for the overlay and the gallery."""
        if view is None or phrase not in view.phrases:
            return self._unchanged()
        return self._render(view, view.image, view.phrases, view.answer, view.phrases.index(phrase), False)

    def _unchanged(self) -> dict:
        # Gradio reads an empty dict as one missing value per output (and logs a traceback); an update that
        # changes nothing is an answer it accepts.
        return {self.status: gr.update()}

    def _render(self, view: SessionView | None, image: ImageSession, phrases: list[str], answer: Answer,
                shown: int, tower_ran: bool) -> dict:
        if view is not None and view.answer is answer:
            folder = view.downloads  # only another phrase shown: the files stand
            files = sorted(folder.iterdir())
        else:
            if view is not None:
                shutil.rmtree(view.downloads, ignore_errors=True)
            folder = Path(tempfile.mkdtemp(dir=self.downloads_root))
            files = write_downloads(folder, self.engine.segmenter(image.method), image, answer)
        result = answer.results[shown]
        return {
            self.session: SessionView(image, phrases, answer, folder),
            self.overlay: display_overlay(image.state.image, result.mask),
            self.summary: summary(image, answer),
            self.shown: gr.update(choices=phrases, value=phrases[shown], visible=len(phrases) > 1),
            self.gallery: ranked_gallery(image, answer, shown, self.top_k),
            self.timing: timing_line(image, answer, tower_ran),
            self.downloads: [str(path) for path in files],
            self.status: "",
        }

