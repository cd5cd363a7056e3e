"""--method vlm per expression, each preset with the photo prefix reused against the authors' structure.

    python bench/vlm.py [--device cpu] [--precision fp32] [--models bench|real] [--families qwen3-vl,...]
                        [--presets sam3-agent,box,marks] [--photos 2] [--expressions 9] [--threads N] [--quick]

Two photos x 9 expressions (bench/vlm_workload.py), through the Segmenter
as ``--method vlm`` runs them, with a stand-in for SAM 3's instances and
scripted replies forced as the model's own output tokens: every prefill and
every decoding step runs on the real model (random weights), and the agent
takes a realistic path (segment_phrase, then select_masks_and_return; two
expressions per photo examine the masks first). Each preset runs twice on
the same model:

  reuse: the in-process backend as it runs, the photo's prefix (system
    prompt and raw photo, and the marks preset's numbered picture after it)
    computed once and kept; a photo's expressions driven together.
  authors': the authors' structure, one query at a time, every call
    prefilling its whole conversation again (the same backend keeping no
    prefix: ``prefix_cache_size=0``).

Per expression: VLM calls, the conversation's tokens, the tokens prefilled,
the tokens generated, the calls' wall seconds and CPU seconds; the ratios of
the authors' agent (``sam3-agent`` without reuse) to each row, in prefilled
tokens and in time (the calls' seconds on CUDA, their CPU seconds on a CPU).
Answers are compared between the two structures: outcome, chosen candidates,
every reply, the marks preset's label log-probabilities (the model's own
choice), and a digest of every logit row the model computed past the kept
prefixes (what the model itself would have said at each step): identical
means bit for bit. Peak memory per row: on
CUDA the allocator's peak over the weights' bytes; on the CPU the process's
peak resident memory above what it held before the model was built (weights
included), over the weights' bytes.

``--models bench`` (default): a family at a CPU size with the real models'
photo tokens (bench/vlm_models.py; qwen3-vl unless ``--families`` says).
``--models real``: the Qwen2.5-VL 7B and Qwen3-VL 4B configurations, first
built on the meta device (parameters counted against the published ones),
then with random bf16 weights built on the GPU; on a CPU they are only
counted, and the rows run at the bench size. ``--quick``: the 1 MP photo,
two expressions. ``--threads 1`` keeps the CPU seconds steady on a shared
machine (two threads spin while waiting for each other).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # tiny_vlm, concept_fixtures, vlm_script

from common import DTYPES, device_name, load_average, markdown  # noqa: E402
from vlm_models import MODELS, bench_tokenizer, build_model, count_parameters, processor  # noqa: E402
from vlm_workload import PHOTOS, concept_source, reply_script  # noqa: E402

from globallocal.methods import build_method  # noqa: E402
from globallocal.models.text import load_parser  # noqa: E402
from globallocal.models.vlm.backend import DEFAULT_MAX_PIXELS  # noqa: E402
from globallocal.models.vlm.transformers_backend import TransformersBackend  # noqa: E402
from globallocal.segmenter import Segmenter  # noqa: E402

PRESETS = ("sam3-agent", "box", "marks")
STRUCTURES = ("reuse", "authors'")
COUNTS = ("calls", "prompt", "prefilled", "generated", "seconds", "cpu")
AGENT_TARGET, ONE_CALL_TARGET, MEMORY_TARGET = 0.5, 10.0, 1.2


class LogitTrace:
    """A digest of every logit row the model computes past a conversation's kept prefixes, per scripted call
    (keyed by the call's texts, in call order): with reuse and without, the model must compute the same
    numbers."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.digests: dict[str, list[str]] = defaultdict(list)
        self.current: str | None = None
        self.vision_end = model.config.vision_end_token_id
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def scripted(self, script):
        def wrapped(messages):
            texts = [p["text"] if isinstance(p, dict) else p for m in messages
                     for p in ([m["content"]] if isinstance(m["content"], str) else m["content"])
                     if not isinstance(p, dict) or p["type"] == "text"]
            self.current = hashlib.sha256(json.dumps(texts).encode()).hexdigest()
            self.digests[self.current].append("")
            return script(messages)
        return wrapped

    def _hook(self, module, args, kwargs, output) -> None:
        # A prefix (it ends with an image's end) is computed in one structure and reused in the other: left out.
        if self.current is None or int(kwargs["input_ids"][0, -1]) == self.vision_end:
            return
        row = output.logits[0, -1].float().cpu().numpy().tobytes()
        calls = self.digests[self.current]
        calls[-1] = hashlib.sha256(calls[-1].encode() + row).hexdigest()

    def take(self) -> dict[str, list[str]]:
        digests, self.digests, self.current = dict(self.digests), defaultdict(list), None
        return digests


class Memory:
    """Peak memory of a row: the CUDA allocator's, or the process's peak RSS above a baseline (Linux)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        self.baseline = 0 if self.cuda else self._status("VmRSS")

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # the kernel's peak RSS (VmHWM) starts again from now

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return self._status("VmHWM") - self.baseline


class CpuTimed:
    """A backend whose calls' CPU seconds (this process's, every thread's) are summed in ``cpu``: the VLM's work
    alone, without the method's drawing and mask handling around it, and little moved by other jobs."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self.cpu = 0.0

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def _timed(self, name: str, *args):
        started = time.process_time()
        try:
            return getattr(self.backend, name)(*args)
        finally:
            self.cpu += time.process_time() - started

    def chat(self, messages, max_tokens):
        return self._timed("chat", messages, max_tokens)

    def chat_many(self, conversations, max_tokens):
        return self._timed("chat_many", conversations, max_tokens)

    def label_logprobs(self, messages, labels):
        return self._timed("label_logprobs", messages, labels)


def run_row(backend: TransformersBackend, nlp, preset: str, photos, expressions: int, together: bool
            ) -> tuple[list[dict], float]:
    """Every expression's cost and answer under ``preset`` (``together``: a photo's expressions in one
    predict_many, else one query at a time), with the VLM's CPU seconds per expression of its photo; and the
    row's wall seconds."""
    backend.prefixes.clear()
    timed = CpuTimed(backend)
    method = build_method("vlm", None, nlp, preset, {"backend": timed})
    records, started = [], time.perf_counter()
    for photo in photos:
        segmenter = Segmenter(None, nlp, proposal_source=concept_source(photo), method=method)
        segmenter.set_image(photo.image())
        texts = [expression.text for expression in photo.expressions[:expressions]]
        timed.cpu = 0.0
        results = segmenter.predict_many(texts) if together else [segmenter.predict(text) for text in texts]
        for result in results:
            answer = result.vlm
            usage = answer.usage
            records.append({
                "photo": photo.name, "calls": usage.calls, "prompt": usage.prompt_tokens,
                "prefilled": usage.prefilled_tokens, "generated": usage.generated_tokens, "seconds": usage.seconds,
                "cpu": timed.cpu / len(results),
                "answer": (answer.outcome, answer.reason, answer.chosen,
                           [call.get("reply") for call in answer.transcript],
                           answer.details.get("label_logprobs")),
            })
    backend.prefixes.clear()  # what this row kept is its own cost, not the next row's
    return records, time.perf_counter() - started


def mean(records: list[dict], key: str) -> float:
    return sum(record[key] for record in records) / max(len(records), 1)


def visual_tokens(backend: TransformersBackend, photos) -> str:
    images = backend.processor.image_processor
    side = images.patch_size * images.merge_size
    counts = []
    for photo in photos:
        width, height = backend.seen_size(photo.image())
        counts.append(f"{photo.name}: {width}x{height}, {width * height // side**2} visual tokens")
    return "; ".join(counts)


@dataclass
class Measured:
    """One model's rows: (preset, structure) -> records, wall seconds, peak memory and logit digests."""

    name: str
    weights: int
    """Bytes of the weights."""
    real_size: bool
    clock: str
    """What the time ratios compare: "seconds" (the VLM calls' wall time, on CUDA) or "cpu" (their CPU time, on
    the CPU: a shared machine disturbs it less)."""
    rows: dict[tuple[str, str], dict]


def measure(spec, tokenizer, args, photos, nlp) -> Measured:
    """Each preset with reuse and in the authors' structure, on one model."""
    memory = Memory(args.device)
    model = build_model(spec, tokenizer, args.device, DTYPES[args.precision])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    family_processor = processor(spec.family, tokenizer)
    backends = {
        "reuse": TransformersBackend(model, family_processor, family=spec.family, max_pixels=args.max_pixels),
        "authors'": TransformersBackend(model, family_processor, family=spec.family, max_pixels=args.max_pixels,
                                        prefix_cache_size=0),
    }
    trace = LogitTrace(model)
    script = trace.scripted(reply_script(photos, spec.family, backends["reuse"].seen_size))
    for backend in backends.values():
        backend.reply_script = script
    text = model.config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = text.num_hidden_layers * 2 * text.num_key_value_heads * head * DTYPES[args.precision].itemsize
    print(f"\n{spec.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{weights / 2**20:.0f} MiB of {args.precision} weights, KV cache {kv / 1024:.0f} KiB a token; "
          f"{visual_tokens(backends['reuse'], photos)}", flush=True)
    clock = "seconds" if args.device.startswith("cuda") else "cpu"
    measured = Measured(spec.name, weights, spec.published is not None, clock, {})
    run_row(backends["authors'"], nlp, "box", photos[:1], 1, together=False)  # warm-up: kernels, allocations
    trace.take()
    for preset in args.presets:
        for structure in STRUCTURES:
            memory.reset()
            records, wall = run_row(backends[structure], nlp, preset, photos, args.expressions,
                                    together=structure == "reuse")
            row = {"records": records, "wall": wall, "peak": memory.peak(), "logits": trace.take()}
            measured.rows[preset, structure] = row
            print(f"row: {spec.name} | {preset} | {structure} | "
                  + " | ".join(f"{key} {mean(records, key):.1f}" for key in COUNTS)
                  + f" | wall {wall:.1f} s | peak {row['peak'] / 2**20:.0f} MiB", flush=True)
    trace.handle.remove()
    del backends, model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return measured


def identical(measured: Measured, preset: str) -> str:
    """Whether both structures gave the same answers, and the same logits."""
    reuse, authors = measured.rows[preset, "reuse"], measured.rows[preset, "authors'"]
    if [r["answer"] for r in reuse["records"]] != [r["answer"] for r in authors["records"]]:
        return "NO"
    return "yes" if reuse["logits"] == authors["logits"] else "answers only, logits differ"


def ratios(measured: Measured, records: list[dict], photo: str | None = None) -> tuple[float, float] | None:
    """(prefilled tokens, time) of the authors' agent over ``records``' (the same photo's when given)."""
    agent = measured.rows.get(("sam3-agent", "authors'"))
    if agent is None:
        return None
    theirs = [r for r in agent["records"] if photo is None or r["photo"] == photo]
    return (mean(theirs, "prefilled") / max(mean(records, "prefilled"), 1e-9),
            mean(theirs, measured.clock) / max(mean(records, measured.clock), 1e-9))


def main_rows(measured: Measured) -> list[list[object]]:
    rows = []
    for (preset, structure), row in measured.rows.items():
        records = row["records"]
        against = ratios(measured, records) if (preset, structure) != ("sam3-agent", "authors'") else None
        rows.append([measured.name, preset, structure, *(f"{mean(records, key):.{2 if key == 'calls' else 0}f}"
                                                         for key in COUNTS[:4]),
                     f"{mean(records, 'seconds'):.2f}", f"{mean(records, 'cpu'):.2f}",
                     f"{against[0]:.1f}x" if against else "",
                     f"{against[1]:.1f}x" if against else "", identical(measured, preset),
                     f"{row['peak'] / 2**20:.0f}", f"{row['peak'] / measured.weights:.2f}"])
    return rows


def photo_rows(measured: Measured, photos) -> list[list[object]]:
    rows = []
    for photo in photos:
        for (preset, structure), row in measured.rows.items():
            records = [r for r in row["records"] if r["photo"] == photo.name]
            against = ratios(measured, records, photo.name) if (preset, structure) != ("sam3-agent", "authors'") \
                else None
            rows.append([measured.name, photo.name, preset, structure, f"{mean(records, 'prefilled'):.0f}",
                         f"{mean(records, 'seconds'):.2f}", f"{mean(records, 'cpu'):.2f}",
                         f"{against[0]:.1f}x" if against else "",
                         f"{against[1]:.1f}x" if against else ""])
    return rows


def target_rows(measured: Measured) -> list[list[object]]:
    rows = []
    if ("sam3-agent", "reuse") in measured.rows:
        tokens, seconds = ratios(measured, measured.rows["sam3-agent", "reuse"]["records"])
        same = identical(measured, "sam3-agent")
        rows.append([measured.name, f"sam3-agent prefills at most {AGENT_TARGET} of the authors' agent, with "
                     "identical answers", f"{1 / tokens:.2f}; time {seconds:.1f}x less; identical: {same}",
                     "yes" if 1 / tokens <= AGENT_TARGET and same == "yes" else "no"])
    for preset in ("box", "marks"):
        if (preset, "reuse") in measured.rows and ("sam3-agent", "authors'") in measured.rows:
            tokens, seconds = ratios(measured, measured.rows[preset, "reuse"]["records"])
            rows.append([measured.name, f"{preset} prefills at least {ONE_CALL_TARGET:.0f}x fewer tokens than "
                         "the authors' agent", f"{tokens:.1f}x; time {seconds:.1f}x less",
                         "yes" if tokens >= ONE_CALL_TARGET else "no"])
    peak = max(row["peak"] for row in measured.rows.values()) / measured.weights
    rows.append([measured.name, f"peak memory within the weights + {MEMORY_TARGET - 1:.0%}",
                 f"{peak:.2f} x the weights (the largest row)",
                 ("yes" if peak <= MEMORY_TARGET else "no") if measured.real_size
                 else "n/a: toy weights (the photo's activations are a real model's)"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=sorted(DTYPES), default=None,
                        help="the VLM's precision (default: bf16 on CUDA, fp32 on the CPU, as the backend's)")
    parser.add_argument("--models", choices=sorted(MODELS), default="bench",
                        help="bench: CPU-sized random models; real: Qwen2.5-VL 7B and Qwen3-VL 4B sizes (CUDA)")
    parser.add_argument("--families", default=None,
                        help="comma-separated qwen3-vl, qwen2.5-vl (default: qwen3-vl for bench, both for real)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated, of " + ", ".join(PRESETS))
    parser.add_argument("--photos", type=int, choices=range(1, len(PHOTOS) + 1), default=len(PHOTOS),
                        help="how many of the photos (the 1 MP one first)")
    parser.add_argument("--expressions", type=int, choices=range(1, 10), default=9, help="expressions per photo")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="the VLM's photo cap")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's; 1 keeps CPU seconds steady on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="the 1 MP photo, two expressions")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.presets = args.presets.split(",")
    if args.quick:
        args.photos, args.expressions = 1, 2
    photos = PHOTOS[:args.photos]

    tokenizer = bench_tokenizer()
    specs, note = MODELS[args.models], ""
    if args.models == "real":
        for spec in specs:
            print(f"{spec.name}: {count_parameters(spec, tokenizer) / 1e9:.3f} B parameters built on the meta "
                  f"device (published: about {spec.published} B)", flush=True)
        if not cuda:
            specs, note = MODELS["bench"], "; on a CPU the real sizes are counted only: the rows run at bench size"
    if args.families:
        specs = [spec for spec in specs if spec.family in args.families.split(",")]
    elif specs is MODELS["bench"]:
        specs = specs[:1]  # the default model's family
    print(f"device: {device_name(args.device)}; {args.precision}; {load_average()}{note}", flush=True)
    nlp = load_parser()
    measured = [measure(spec, tokenizer, args, photos, nlp) for spec in specs]
    busy = ""
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        busy = " The load is above the core count: other jobs shared the machine, so the seconds are noisy."
    clock = "the VLM calls' seconds" if cuda else "the VLM calls' CPU seconds"
    print(f"\n{len(photos)} photo(s) x {args.expressions} expressions, random weights, {args.precision}, "
          f"{device_name(args.device)}. Means per expression; tokens as the model counts them (text by the "
          "bench's BPE, about 25% more than Qwen's tokenizer; photo tokens exact); seconds: the VLM calls' wall "
          "time; CPU s: the process's CPU time in the VLM calls (every thread's); "
          f"x: the authors' sam3-agent over the row (prefilled tokens; time: {clock}); peak memory "
          f"({'the allocator' if cuda else 'peak RSS growth since before the model was built'}) per row. "
          f"{load_average()}.{busy}\n")
    print(markdown(["model", "preset", "structure", "calls", "prompt tokens", "prefilled", "generated", "seconds",
                    "CPU s", "prefilled: authors' agent / row", "time: authors' agent / row", "answers identical",
                    "peak MiB", "peak / weights"], [row for m in measured for row in main_rows(m)]))
    print("\nPer photo\n")
    print(markdown(["model", "photo", "preset", "structure", "prefilled", "seconds", "CPU s",
                    "prefilled: authors' agent / row", "time: authors' agent / row"],
                   [row for m in measured for row in photo_rows(m, photos)]))
    fewer = ""
    if len(photos) * args.expressions < len(PHOTOS) * 9:
        fewer = (" (set for 2 photos x 9 expressions: with fewer, each photo's prefix is shared by fewer "
                 "expressions)")
    print(f"\nTargets{fewer}\n")
    print(markdown(["model", "target", "measured", "met"], [row for m in measured for row in target_rows(m)]))


if __name__ == "__main__":
    main()
