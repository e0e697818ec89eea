"""The decode loop of ``jasco-fast decode``: input files in, one audio file per item out, and the torchrun sharding
that splits the files across processes.

:class:`DecodeLoop` reads its files (a bad one is reported on one line, the others still run), skips items whose
output exists, groups items of equal length into batches, and decodes batch k + 1 while batch k is copied to the
host and written on a background thread. :class:`Shard` is this process's part of a torchrun job: which files it
decodes, and the gathering of every rank's :class:`Summary`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jasco_fast import io as inputs
from jasco_fast.audio import write_batch
from jasco_fast.errors import first_line, is_out_of_memory
from jasco_fast.overlap import HostCopy, Outcome, WriteQueue
from jasco_fast.pipeline import CodeDecoder, LatentDecoder

__all__ = ["DecodeLoop", "Item", "Shard", "Summary", "stem_clashes"]


@dataclass
class Item:
    name: str
    latents: torch.Tensor  # [T, D]; codes frames-major, [T, K]
    codes: bool = False


@dataclass
class Summary:
    rank: int = 0
    decoded: int = 0
    audio_seconds: float = 0.0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"rank {self.rank}: {self.decoded} items, {self.audio_seconds:.1f} audio s, {self.skipped} skipped, "
            f"{len(self.failures)} failed"
        )

    def merge(self, other: Summary) -> None:
        self.decoded += other.decoded
        self.audio_seconds += other.audio_seconds
        self.skipped += other.skipped
        self.failures += other.failures


# --------------------------------------------------------------------------------------------------
# torchrun


@dataclass(frozen=True)
class Shard:
    """This process's part of the job: rank ``rank`` of ``world`` (torchrun's; 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world) if world > 1 else cls()

    def files(self, all_files: list[str]) -> list[str]:
        """Each file is decoded by exactly one rank (``all_files`` must be the same list on every rank)."""
        return all_files[self.rank :: self.world]

    def start(self, device: torch.device) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def gather(self, part):
        """Every rank's ``part``, in rank order (on every rank, so each learns whether any failed); ends the
        process group."""
        if self.world == 1:
            return [part]
        import torch.distributed as dist

        parts = [None] * self.world
        dist.all_gather_object(parts, part)
        dist.destroy_process_group()
        return parts


def stem_clashes(files: list[str]) -> dict[str, str]:
    """File -> why it cannot be decoded, for files whose name (stem) an earlier file in the sorted list already
    has: their outputs would overwrite each other. Decided on the full list, so every rank agrees."""
    first: dict[str, str] = {}
    clashes = {}
    for f in files:
        stem = Path(f).stem
        if stem in first:
            clashes[f] = f"its output names clash with those of {first[stem]} (same file name); rename one of them"
        else:
            first[stem] = f
    return clashes


# Errors of the output folder rather than of one item: full, read-only, no permission.
_FOLDER_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def folder_problem(out_dir: Path, exc: BaseException, needed: int) -> str | None:
    """Why ``out_dir`` cannot take more output after a failed write (full, read-only, no permission), or
    None when the failure looks like the item's own. libsndfile reports a full disk as "System error."
    without the errno, so the folder itself is asked too (``needed``: bytes the batch would take as WAV)."""
    if isinstance(exc, OSError) and exc.errno in _FOLDER_ERRORS:
        return exc.strerror or str(exc)
    try:
        stat = os.statvfs(out_dir)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    if stat.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if stat.f_bavail * stat.f_frsize < needed:
        return f"no space left: {stat.f_bavail * stat.f_frsize} bytes free"
    return None


# --------------------------------------------------------------------------------------------------
# The loop


class DecodeLoop:
    """Decodes latent and code files into ``out_dir``, one audio file per item, with ``fast`` (latents) and
    ``code_decoder()`` (codes; called at the first codes file, so a run without codes loads no quantizer).

    ``report`` gets one line per problem (a bad file, a failed batch); ``run`` returns the :class:`Summary`."""

    def __init__(
        self,
        fast: LatentDecoder,
        code_decoder: Callable[[], CodeDecoder],
        out_dir: Path,
        *,
        batch_size: int,
        format: str,
        strategy: str,
        mp3_rate: int,
        overwrite: bool,
        device: torch.device,
        report: Callable[[str], None],
        progress: bool = True,
        rank: int = 0,
    ):
        self.fast, self.out_dir, self.device, self.report = fast, out_dir, device, report
        self._make_code_decoder, self._code_decoder = code_decoder, None
        self.batch_size, self.format, self.strategy, self.mp3_rate = batch_size, format, strategy, mp3_rate
        self.overwrite, self.progress = overwrite, progress
        self.frame_rate = fast.decoder.config.frame_rate
        self.summary = Summary(rank=rank)
        self._stop: str | None = None  # set when the output folder can take no more

    def code_decoder(self) -> CodeDecoder:
        if self._code_decoder is None:
            self._code_decoder = self._make_code_decoder()
        return self._code_decoder

    def run(self, files: list[str], clashes: dict[str, str] | None = None) -> Summary:
        """Decode ``files`` (``clashes``: file -> why it must not be decoded, e.g. from :func:`stem_clashes`)."""
        from tqdm import tqdm

        items = self.read(files, clashes or {})
        total = sum(it.latents.shape[0] for it in items) / self.frame_rate
        # The bar counts audio seconds, so its rate reads "audio seconds decoded per wall second".
        with tqdm(
            total=round(total, 3),
            unit="s",
            desc="decoding audio seconds",
            disable=not self.progress or not items,
            dynamic_ncols=True,
            file=sys.stderr,
        ) as self._bar:
            self._decode_overlapped(self.batches(items))
        return self.summary

    # ---- inputs

    def _fail(self, path, problem: str) -> None:  # one line per bad input; the others still run
        self.report(f"{path}: {first_line(problem, 'error')}")
        self.summary.failures.append(str(path))

    def read(self, files: list[str], clashes: dict[str, str]) -> list[Item]:
        """The items to decode: every item of every readable file whose output is not there yet."""
        items: list[Item] = []
        names: set[str] = set()
        for f in files:
            path = Path(f)
            if f in clashes:
                self._fail(path, clashes[f])
                continue
            try:
                tensor = inputs.load_tensor(path)
                codes = inputs.is_codes(tensor)  # told apart by dtype
                if codes:
                    cd = self.code_decoder()
                    latents, single = inputs.read_codes(path, tensor, cd.num_codebooks, cd.codebook_size)
                    latents = latents.transpose(1, 2)  # frames-major [B, T, K], as items are
                else:
                    latents, single = inputs.read_latents(path, self.fast.decoder.dimension, tensor)
            except Exception as exc:
                self._fail(path, str(exc) or type(exc).__name__)
                continue
            stems = [path.stem] if single else [f"{path.stem}_{i}" for i in range(latents.shape[0])]
            if names & set(stems):  # e.g. "x_0.pt" holding [T, D] next to "x.pt" holding [B, T, D]
                self._fail(
                    path, f"output name {sorted(names & set(stems))[0]!r} is taken by another input; rename the file"
                )
                continue
            names |= set(stems)
            for stem, lat in zip(stems, latents):
                if not self.overwrite and (self.out_dir / f"{stem}.{self.format}").exists():
                    self.summary.skipped += 1
                else:
                    items.append(Item(stem, lat, codes))
        return items

    def batches(self, items: list[Item]) -> list[list[Item]]:
        # Only items of EQUAL length T share a batch (sorted by T): padding a shorter item to a longer one would
        # change the last frames of its audio (the decoder's convolutions and LSTM see the padding).
        by_length: dict[tuple, list[Item]] = {}
        for item in items:  # (T, codes or latents, D or K)
            by_length.setdefault((item.latents.shape[0], item.codes, item.latents.shape[1]), []).append(item)
        return [
            group[i : i + self.batch_size]
            for _, group in sorted(by_length.items())
            for i in range(0, len(group), self.batch_size)
        ]

    # ---- decoding and writing

    def decode(self, batch: list[Item]) -> torch.Tensor:
        stacked = torch.stack([it.latents for it in batch])  # frames-major: [B, T, D] latents or [B, T, K] codes
        return self.code_decoder()(stacked.transpose(1, 2)) if batch[0].codes else self.fast(stacked)

    def write(self, job: tuple[list[Item], HostCopy]) -> None:  # on the writer thread
        batch, audio = job
        write_batch(
            audio.result(),
            [str(self.out_dir / it.name) for it in batch],
            self.fast.sample_rate,
            format=self.format,
            strategy=self.strategy,
            mp3_rate=self.mp3_rate,
        )

    def _account(self, outcome: Outcome) -> None:
        batch, _ = outcome.job
        if outcome.error is not None:  # e.g. disk full
            self.report(
                f"writing {', '.join(it.name for it in batch)}: {type(outcome.error).__name__}: "
                f"{first_line(outcome.error, '')}"
            )
            self.summary.failures += [it.name for it in batch]
            if self._stop is None:
                needed = (
                    sum(it.latents.shape[0] for it in batch) * 2 * self.fast.hop_length * self.fast.decoder.channels
                )
                self._stop = folder_problem(self.out_dir, outcome.error, needed=needed)
            return
        seconds = len(batch) * batch[0].latents.shape[0] / self.frame_rate
        self.summary.decoded += len(batch)
        self.summary.audio_seconds += seconds
        self._bar.update(min(seconds, self._bar.total - self._bar.n))  # no overshoot from float rounding

    def _decode_overlapped(self, batches: list[list[Item]]) -> None:
        """Decodes batch k + 1 while batch k is copied to the host (pinned, non-blocking) and written on a
        background thread. A batch that fails to decode or to write fails alone and the others still run,
        except when the output folder can take no more (full, read-only): then the run stops."""
        rest: list[str] = []
        with WriteQueue(self.write, depth=2) as writer:
            for number, batch in enumerate(batches):
                if self._stop is not None:  # every later write would fail too
                    rest = [it.name for b in batches[number:] for it in b]
                    self.summary.failures += rest
                    break
                names = ", ".join(it.name for it in batch)
                try:
                    audio = self.decode(batch)
                    writer.put((batch, HostCopy(audio)))
                except Exception as exc:  # e.g. out of memory: those items fail, the others still run
                    if is_out_of_memory(exc):
                        items = f"{len(batch)} item{'s' if len(batch) > 1 else ''}"
                        self.report(
                            f"decoding {names}: out of memory with {items} of {batch[0].latents.shape[0]} "
                            f"frames (--batch-size {self.batch_size}) on {self.device}: rerun with a smaller "
                            f"--batch-size, or --chunk-frames to decode in chunks"
                        )
                        if self.device.type == "cuda":
                            torch.cuda.empty_cache()  # give the next batches the memory back
                    else:
                        self.report(f"decoding {names}: {type(exc).__name__}: {first_line(exc, '')}")
                    self.summary.failures += [it.name for it in batch]
                for outcome in writer.done():
                    self._account(outcome)
            for outcome in writer.close():
                self._account(outcome)
        if self._stop is not None:
            self.report(
                f"stopping: {self.out_dir} cannot take more output ({self._stop}); {len(rest)} items not "
                f"decoded; the files written so far are whole, and a rerun decodes only what is missing"
            )
