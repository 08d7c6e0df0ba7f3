"""The Gradio page over jobs.Server: a transfer tab (upload or pick the inputs, the official
options, live progress per stage, the result beside its inputs, the target mask with its
legend, the pasted photo, downloads) and a grid tab (faces x hairstyles as a contact sheet).
Bad inputs give a one-line message on the page (gr.Error), never a traceback; jobs queue, one
at a time on the models. The page sends nothing anywhere (Gradio's usage analytics are off), and
Gradio's temporary copies of a job's uploads are removed when the job ends."""
from __future__ import annotations

import contextlib
import html
import logging
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from barbershop_jax.config import SIGNS, TransferConfig
from barbershop_jax.pipeline import demo, doctor
from barbershop_jax.pipeline import grid as grid_lib
from barbershop_jax.web import jobs

OFFICIAL = TransferConfig()  # the options' defaults
SHOWN = 256  # px: images smaller than this are shown enlarged (nearest neighbour); downloads keep their size
STEP_LABELS = {"w_steps": "W+ steps", "fs_steps": "FS steps", "inpaint_steps": "inpainting steps (each round)",
               "align_steps1": "alignment steps 1", "align_steps2": "alignment steps 2", "blend_steps": "blend steps"}
EMBEDDED_BANNER = ("**The embedded tiny models** ({size} px, fixed random weights) run the whole pipeline, with "
                   "reduced step counts; **random weights give no real hairstyle**. For real transfers get the "
                   "official weights with `barbershop-jax weights download` and start `barbershop-jax serve` again.")
log = logging.getLogger("barbershop_jax")
# Gradio's own clean-up of its temporary files (outputs, and the uploads of a job refused before
# it ran): every 10 minutes, those older than an hour; all of them when the server stops.
DELETE_CACHE = (600, 3600)
CSS = ".legend span.swatch {display:inline-block;width:0.9em;height:0.9em;margin:0 0.3em 0 0.8em;" \
      "border:1px solid #888;vertical-align:middle}"


class RefusedUpload(str):
    """An upload's path with the one line saying why it cannot be used: the job refuses it
    (check_uploads), so that the job's `finally` removes every upload of the request."""

    def __new__(cls, path, message: str):
        refused = super().__new__(cls, path or "")
        refused.message = message
        return refused


class Upload(gr.Image):
    """gr.Image whose unreadable uploads give a one-line message naming the file (gr.Image
    itself raises Pillow's error, which the page shows as a bare "Error"; a decompression bomb
    is refused as Pillow opens it). An upload removed when its job ended is passed on as its
    path: the server has its copy (jobs.Server.store_upload), so that the page can run it again."""
    is_template = True  # drawn by the Image component of the page

    def preprocess(self, payload):
        path = getattr(payload, "path", None)
        if path and not (getattr(payload, "url", None) or "").startswith("data:") and not Path(path).exists():
            return str(path)
        try:
            return super().preprocess(payload)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # Unidentified...: OSError
            name = getattr(payload, "orig_name", None) or "the upload"
            why = str(e).strip() if isinstance(e, Image.DecompressionBombError) else type(e).__name__
            return RefusedUpload(path, f"{self.label}: {name} is not a readable image ({why})")


def check_uploads(*values):
    """gr.Error with the first refused upload's line (RefusedUpload)."""
    for value in values:
        if isinstance(value, RefusedUpload):
            raise gr.Error(html.escape(value.message), print_exception=False)


class Files(gr.File):
    """gr.File of several images, passed on as their paths, without the empty temporary file
    that gr.File's own preprocess leaves in Gradio's folder for each file (the server reads
    and checks the images itself: jobs.Server.store_upload)."""
    is_template = True  # drawn by the File component of the page

    def preprocess(self, payload):
        if payload is None:
            return None
        return [str(f.path) for f in getattr(payload, "root", [payload])]


class Whole(gr.Number):
    """gr.Number for a whole-number option, passed on as it came: the job checks it (check_numbers),
    so that a refusal is one line naming the field (gr.Number's own range check names none, and
    it rounds NaN or infinity into a bare "Error") and the job's `finally` still runs."""
    is_template = True  # drawn by the Number component of the page

    def preprocess(self, payload):
        return payload


def number_fields(max_steps: int) -> list:
    """(label, maximum, hint) of the page's numbers, in the order the events take them: smooth,
    seed, then the step counts (hint: the serve option that sets the maximum)."""
    return [("smooth (F-mixing mask dilation)", jobs.MAX_SMOOTH, ""), ("seed", jobs.MAX_SEED, ""),
            *((STEP_LABELS[k], max_steps, ": serve --max-steps") for k in jobs.STEP_FIELDS)]


def check_numbers(max_steps: int, *values):
    """A ValueError naming the first number that is not whole and within its range (a step
    count may be empty: the pipeline's default)."""
    for (label, maximum, hint), value in zip(number_fields(max_steps), values):
        if value is not None or maximum != max_steps:
            jobs.whole_number(label, value, maximum, hint)


def remove_temporary(paths, cache_folder, keep=(), before_removing=None):
    """Delete those of `paths` that are Gradio's temporary uploads (files in its upload folder,
    `cache_folder`), except the bundled examples' cached copies (`keep`), with their folders
    when empty. before_removing(path) is called on each first (the server keeps its copy)."""
    folder = Path(cache_folder).resolve()
    for path in paths:
        if not path or str(path) in keep or not Path(path).is_file():
            continue
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(folder):
            continue
        if before_removing is not None:
            before_removing(Path(path))
        resolved.unlink(missing_ok=True)
        if resolved.parent != folder:
            with contextlib.suppress(OSError):  # not empty: another upload of the same content's folder
                resolved.parent.rmdir()


def _upload(label: str, **kwargs) -> Upload:
    # image_mode=None: the file as uploaded reaches the pipeline (no re-encoding, EXIF kept).
    return Upload(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], height=220,
                  **kwargs)


def _shown(image):
    """An image for the page: small ones enlarged, with nearest neighbour (pixels as they are)."""
    if image is None:
        return None
    image = np.asarray(image)
    if max(image.shape[:2]) >= SHOWN:
        return image
    scale = -(-SHOWN // max(image.shape[:2]))
    return np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                    Image.NEAREST))


def legend_html(entries) -> str:
    swatches = "".join(f'<span class="swatch" style="background:rgb{tuple(colour)}"></span>{html.escape(name)}'
                       for name, colour in entries)
    return f'<div class="legend"><b>Target mask:</b>{swatches}</div>'


def _eta(seconds) -> str:
    if seconds is None:
        return "time left: measuring (compiling first)"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"about {minutes} min {secs} s left" if minutes else f"about {secs} s left"


def _reporter(progress):
    """The stage bar's state as the page's progress: the stage, its steps and its ETA."""
    def report(bar):
        progress((bar.done, bar.total), desc=f"{bar.desc}: {_eta(bar.seconds_left)}", unit="steps")
    return report


def _message(error: Exception) -> str:
    """The error's first line, escaped (gr.Error renders its message as HTML)."""
    text = str(error).strip().splitlines()
    return html.escape(text[0] if text else type(error).__name__)


def _page_error(error: Exception) -> gr.Error:
    """The page's message for a failed job: bad inputs or settings (ValueError, OSError: image,
    crop, landmark and divergence errors) in their one line; anything else in one line too,
    with its traceback in the server's log."""
    if isinstance(error, (ValueError, OSError)):
        return gr.Error(_message(error), print_exception=False)
    log.error("web job failed", exc_info=error)
    return gr.Error(f"the job failed: {type(error).__name__}: {_message(error)} (the server's log has the details)",
                    print_exception=False)


def build(server: jobs.Server) -> gr.Blocks:
    """The page's Blocks (not launched)."""
    steps = server.default_steps
    numbers = number_fields(server.limits.max_steps)
    examples = demo.example_images()

    def option_values(sign, smooth, seed, region, *step_values):
        check_numbers(server.limits.max_steps, smooth, seed, *step_values)
        return server.options(sign, smooth, seed, region, **dict(zip(jobs.STEP_FIELDS, step_values)))

    def release(paths):
        """The job's uploads out of Gradio's temporary folder, the server's copy kept."""
        keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in page.blocks.values()))
        remove_temporary(paths, page.GRADIO_CACHE, keep, before_removing=keep_copy)

    def keep_copy(path):
        with contextlib.suppress(jobs.UploadError, OSError):  # an unusable file: nothing to keep
            server.store_upload(path, "upload")

    def transfer(face, shape, color, structure, *rest, progress=gr.Progress()):
        try:
            return transfer_job(face, shape, color, structure, *rest, progress=progress)
        finally:
            release([face, shape, color, structure])

    def grid(faces, hairstyles, colors, *rest, progress=gr.Progress()):
        try:
            return grid_job(faces, hairstyles, colors, *rest, progress=progress)
        finally:
            release([*(faces or []), *(hairstyles or []), *(colors or [])])

    def transfer_job(face, shape, color, structure, crop_references, region, sign, smooth, seed, *step_values,
                     progress):
        check_uploads(face, shape, color, structure)
        try:
            options = option_values(sign, smooth, seed, region, *step_values)
            progress(0, desc="Preparing the inputs")
            result = server.transfer_one(face, shape, color, structure, crop_references=bool(crop_references),
                                         on_progress=_reporter(progress), **options)
        except Exception as e:  # noqa: BLE001 (the page shows one line, never a traceback)
            raise _page_error(e) from None
        return (_shown(result.image), [(_shown(image), caption) for image, caption in result.inputs],
                _shown(result.mask), legend_html(result.legend), _shown(result.pasted),
                [str(p) for p in result.files], "\n".join(f"- {line}" for line in result.notes))

    def grid_job(faces, hairstyles, colors, crop_references, region, sign, smooth, seed, *step_values, progress):
        try:
            options = option_values(sign, smooth, seed, region, *step_values)
            progress(0, desc="Preparing the inputs")
            result, notes, report = server.grid(faces or [], hairstyles or [], colors or None,
                                        crop_references=bool(crop_references), on_progress=_reporter(progress),
                                        **options)
        except Exception as e:  # noqa: BLE001
            raise _page_error(e) from None
        failed = sum(r is None for row in result.results for r in row)
        notes.append(grid_lib.title(len(result.results), len(result.results[0]) if result.results else 0)
                     + (f"; {failed} cell(s) failed (grey)" if failed else ""))
        return (result.sheet, [str(result.sheet_path)],
                "\n".join(f"- {line}" for line in notes) + (f"\n\n```\n{report}\n```" if report else ""))

    def options_panel():
        with gr.Accordion("Options (official defaults" + (", step counts reduced for the tiny models)" if
                                                            server.embedded else ")"), open=False):
            crop_references = gr.Checkbox(False, label="Align the references too (FFHQ crops from their landmarks; "
                                                        "off: square references are taken as aligned crops)")
            with gr.Row():
                sign = gr.Radio(list(SIGNS), value=OFFICIAL.sign, label="sign (target-mask inpainting)")
                smooth = Whole(OFFICIAL.smooth, label=numbers[0][0], precision=0, minimum=0, maximum=numbers[0][1])
                seed = Whole(OFFICIAL.seed, label=numbers[1][0], precision=0, minimum=0, maximum=numbers[1][1])
                region = gr.Textbox(OFFICIAL.region, label="region (parser labels, e.g. hair, lips, brows,eyes)",
                                    max_length=jobs.MAX_REGION_CHARS)
            with gr.Row():
                counts = [Whole(steps[k], label=label, precision=0, minimum=0, maximum=maximum)
                          for k, (label, maximum, _) in zip(jobs.STEP_FIELDS, numbers[2:])]
        return [crop_references, region, sign, smooth, seed, *counts]

    with gr.Blocks(title="barbershop-jax", analytics_enabled=False, delete_cache=DELETE_CACHE) as page:
        gr.Markdown("# barbershop-jax: hairstyle transfer\nThe face of one photo with the hair shape of a second "
                    "and the hair colour of a third (Barbershop, Zhu et al. 2021). The face photo is aligned "
                    "(FFHQ crop) where its landmarks can be found; square references are taken as aligned crops "
                    "(non-square ones are aligned).")
        if server.embedded:
            gr.Markdown(EMBEDDED_BANNER.format(size=server.size), elem_id="embedded-banner")
        with gr.Accordion("This machine (barbershop-jax doctor)", open=False):
            gr.Markdown(doctor.markdown(server.machine_report()), elem_id="machine-report")
        with gr.Tab("Transfer"):
            with gr.Row():
                face = _upload("Face photo", elem_id="face")
                shape = _upload("Shape reference", elem_id="shape")
                color = _upload("Colour reference", elem_id="color")
            with gr.Accordion("Structure reference (optional: the region's coarse structure; default the shape "
                              "reference)", open=False):
                structure = _upload("Structure reference", elem_id="structure")
            gr.Examples([[str(examples["photo"]), str(examples["shape"]), str(examples["color"])],
                         [str(examples["face"]), str(examples["shape"]), str(examples["color"])]],
                        inputs=[face, shape, color], label="Bundled examples (click one)")
            options = options_panel()
            run = gr.Button("Transfer", variant="primary", elem_id="run")
            with gr.Row():
                result = gr.Image(label="Result", format="png", interactive=False, elem_id="result")
                shown_inputs = gr.Gallery(label="Inputs as the pipeline took them", columns=4, height=300,
                                          format="png", interactive=False)
            with gr.Row():
                with gr.Column():
                    mask = gr.Image(label="Target mask", format="png", interactive=False)
                    legend = gr.HTML()
                pasted = gr.Image(label="Result pasted into the face's photo", format="png", interactive=False)
            with gr.Row():
                downloads = gr.File(label="Downloads: result, latents (official npz), pasted photo",
                                    file_count="multiple", interactive=False)
                notes = gr.Markdown(elem_id="notes")
            run.click(transfer, [face, shape, color, structure, *options],
                      [result, shown_inputs, mask, legend, pasted, downloads, notes], api_name="transfer",
                      show_progress_on=result, concurrency_id="models")
        with gr.Tab("Grid"):
            gr.Markdown("Several faces x several hairstyles in one run: a contact sheet with the faces as rows and "
                        "the hairstyles as columns (each hairstyle's own colour unless colour references are given: "
                        "one per hairstyle, or one for all).")
            with gr.Row():
                faces = Files(label="Faces", file_count="multiple", file_types=["image"], type="filepath")
                hairstyles = Files(label="Hairstyles", file_count="multiple", file_types=["image"], type="filepath")
                colors = Files(label="Colour references (optional)", file_count="multiple", file_types=["image"],
                               type="filepath")
            grid_options = options_panel()
            run_grid = gr.Button("Run the grid", variant="primary", elem_id="run-grid")
            sheet = gr.Image(label="Contact sheet", format="png", interactive=False, elem_id="sheet")
            with gr.Row():
                sheet_file = gr.File(label="Download the sheet", file_count="multiple", interactive=False)
                grid_notes = gr.Markdown()
            run_grid.click(grid, [faces, hairstyles, colors, *grid_options], [sheet, sheet_file, grid_notes],
                           api_name="grid", show_progress_on=sheet, concurrency_id="models")
    # One job at a time on the models (both tabs' events share one concurrency group); the queue
    # keeps the others, from any number of browser tabs.
    page.queue(default_concurrency_limit=1)
    return page


def launch(server: jobs.Server, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True):
    """Serve the page on host:port (localhost by default); block=False returns at once. Gradio
    refuses an upload over the server's limits.max_upload_mb as it arrives."""
    page = build(server)
    page.launch(server_name=host, server_port=port, allowed_paths=[str(server.out_dir)], css=CSS,
                prevent_thread_lock=not block, quiet=not block, footer_links=["api"],
                max_file_size=server.limits.max_upload_bytes)
    return page
