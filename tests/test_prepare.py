"""`mlbpipe prepare cremad` end to end on the synthetic corpus with defects, plus the pieces it is made of:
the deterministic shard writer, the spectrogram, and the resumable per-clip stage engine."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mlb.common.atomic import atomic_folder, remove_stale_temps
from pipeline.cli import app
from pipeline.compute.spectrogram import loop_into, mel_filterbank, spectrogram_batch
from pipeline.engine import ClipJob, LocalExecutor, run_per_clip
from pipeline.manifest import Reason, read_manifest
from pipeline.stages.spectrograms import SpectrogramConfig, load_fixed_length
from pipeline.store.intermediates import is_complete
from pipeline.store.shards import read_shard, write_shards, write_sizes_and_meta

runner = CliRunner()


# --- the shard writer ----------------------------------------------------------------------------------


def _samples(n: int):
    for i in range(n):
        yield (
            f"clip_{i:03d}",
            {"spec.npy": np.full((4, 5), i, np.float32), "json": {"id": f"clip_{i:03d}", "b": 1}},
        )


@pytest.mark.unit
def test_shards_are_byte_identical_and_split_by_maxcount(tmp_path):
    sizes_a = write_shards(_samples(5), tmp_path / "a", "train", maxcount=2)
    sizes_b = write_shards(_samples(5), tmp_path / "b", "train", maxcount=2)
    assert sizes_a == sizes_b == {"train-000000.tar": 2, "train-000001.tar": 2, "train-000002.tar": 1}
    for name in sizes_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "clip_000.json",
        "clip_000.spec.npy",
        "clip_001.json",
        "clip_001.spec.npy",
    ]
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) for m in members} == {(0, 0, 0, 0o644, "", "")}
    samples = read_shard(tmp_path / "a" / "train-000001.tar")
    assert [k for k, _ in samples] == ["clip_002", "clip_003"]
    assert samples[0][1]["spec.npy"].dtype == np.float32 and samples[0][1]["json"] == {
        "id": "clip_002",
        "b": 1,
    }
    assert not list((tmp_path / "a").glob("*.tmp-*"))


@pytest.mark.unit
def test_json_fields_have_sorted_keys(tmp_path):
    write_shards([("k", {"json": {"z": 1, "a": 2}})], tmp_path, "test")
    with tarfile.open(tmp_path / "test-000000.tar") as tar:
        assert tar.extractfile("k.json").read() == b'{"a":2,"z":1}'


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "fields", "error"),
    [
        ("a.b", {"json": {}}, "dots"),
        ("a", {"x.npy": np.array([{"x": 1}], dtype=object)}, "object arrays"),
        ("a", {"x.pickle": b"..."}, "neither"),
        ("a", {"x.jpg": b"..."}, "neither"),
    ],
)
def test_shard_writer_refuses_what_readers_must_refuse(tmp_path, key, fields, error):
    with pytest.raises((ValueError, TypeError), match=error):
        write_shards([(key, fields)], tmp_path, "train")
    assert not list(tmp_path.iterdir())  # no partial tar survives


@pytest.mark.unit
def test_shard_reader_refuses_pickles(tmp_path):
    payload = io.BytesIO()
    np.save(payload, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("k.x.npy")
        info.size = len(payload.getvalue())
        tar.addfile(info, io.BytesIO(payload.getvalue()))
    with pytest.raises(ValueError):
        read_shard(tmp_path / "evil.tar")


@pytest.mark.unit
def test_atomic_folder_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "raw"
    with atomic_folder(target) as tmp:
        write_shards(_samples(3), tmp, "train", maxcount=1)
    assert len(list(target.glob("*.tar"))) == 3
    with atomic_folder(target) as tmp:
        write_shards(_samples(3), tmp, "train", maxcount=5)
        write_sizes_and_meta(tmp, {"train-000000.tar": 3}, {"input_path": "raw"})
    assert sorted(p.name for p in target.iterdir()) == ["meta.json", "sizes.json", "train-000000.tar"]
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "half.tar").write_bytes(b"x")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # the old folder stays, whole


# --- spectrograms ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_loop_into_tiles_then_cuts():
    assert loop_into(np.array([1.0, 2.0, 3.0]), np.empty(7)).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert loop_into(np.arange(10.0), np.empty(4)).tolist() == [0, 1, 2, 3]


@pytest.mark.unit
@pytest.mark.parametrize(("kind", "shape"), [("mel", (80, 188)), ("stft", (257, 188))])
def test_spectrogram_shapes(kind, shape):
    config = SpectrogramConfig(kind=kind)
    assert config.shape == shape
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, (2, config.num_samples)).astype(np.float32)
    spec = spectrogram_batch(wave, vars(config))
    assert spec.shape == (2, *shape) and spec.dtype == np.float32 and np.isfinite(spec).all()


@pytest.mark.unit
def test_cremad_defaults_to_the_authors_log_stft_and_params_can_still_ask_for_log_mel():
    from pipeline.corpora.cremad import CORPUS
    from pipeline.prepare import prepare_config

    spec = prepare_config(CORPUS, {}, {}).spectrograms  # the MLB authors' CREMA-D loader
    assert (spec.kind, spec.sample_rate, spec.seconds, spec.n_fft, spec.hop_length) == (
        "stft", 22050, 3.0, 512, 353
    )  # fmt: skip
    assert spec.shape == (257, 188)
    # a global `spectrograms` section would also reach AVE's and UCF101's defaults: a params file keeps
    # CREMA-D's log-Mel under corpora.cremad
    mel = prepare_config(CORPUS, {"corpora": {"cremad": {"spectrograms": {"kind": "mel"}}}}, {}).spectrograms
    assert (mel.kind, mel.shape) == ("mel", (80, 188))


@pytest.mark.unit
def test_log_stft_matches_scipy_signal():
    """The `stft` option is the authors' log(|STFT| + 1e-7), periodic Hann window 512, hop 353, frames
    centred on t * hop with zeros beyond the ends: scipy.signal's ShortTimeFFT computes the same STFT
    independently (its slice p is centred on sample p * hop; scale_to=None keeps the raw window)."""
    from scipy.signal import ShortTimeFFT
    from scipy.signal.windows import hann

    config = vars(SpectrogramConfig(kind="stft"))
    wave = np.random.default_rng(1).uniform(-1, 1, 66150).astype(np.float32)
    stft = ShortTimeFFT(hann(512, sym=False), hop=353, fs=22050, mfft=512, scale_to=None)
    reference = np.log(np.abs(stft.stft(wave.astype(np.float64), p0=0, p1=188)) + 1e-7)  # [257, 188]
    np.testing.assert_allclose(spectrogram_batch(wave[None], config)[0], reference, atol=2e-3)


@pytest.mark.unit
def test_default_mel_bands_leave_no_empty_filter():
    config = SpectrogramConfig()
    fbank = mel_filterbank(config.n_fft // 2 + 1, config.sample_rate, config.n_mels)  # [257, 80]
    assert (fbank.max(axis=0) > 0).all()


@pytest.mark.unit
def test_mel_filterbank_equals_torchaudios_defaults():
    import torchaudio.functional as AF

    for n_mels in (40, 80, 128):
        reference = AF.melscale_fbanks(257, 0.0, 11025.0, n_mels, 22050).numpy()  # HTK, no norm
        np.testing.assert_allclose(
            mel_filterbank(257, 22050, n_mels), reference, atol=1e-4
        )  # torch computes in float32


@pytest.mark.unit
def test_log_mel_matches_a_torch_reference():
    import torch
    import torchaudio.functional as AF

    config = vars(SpectrogramConfig())
    wave = np.random.default_rng(2).uniform(-1, 1, (2, 66150)).astype(np.float32)
    stft = torch.stft(
        torch.from_numpy(wave),
        512,
        353,
        window=torch.hann_window(512),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # [2, 257, 188]
    fbank = AF.melscale_fbanks(257, 0.0, 11025.0, 80, 22050)  # [257, 80]
    reference = torch.log(torch.einsum("bft,fm->bmt", stft.abs() ** 2, fbank) + 1e-7).numpy()  # [2, 80, 188]
    np.testing.assert_allclose(spectrogram_batch(wave, config), reference, atol=1e-3)


@pytest.mark.unit
def test_resampling_keeps_a_tone_at_its_frequency(tmp_path):
    import soundfile as sf

    t = np.arange(16000 * 2) / 16000
    sf.write(
        tmp_path / "tone.wav",
        (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32),
        16000,
        subtype="PCM_16",
    )
    wave = load_fixed_length(str(tmp_path / "tone.wav"), vars(SpectrogramConfig()))  # [66150] at 22.05 kHz
    assert wave.shape == (66150,) and wave.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(wave[:22050]))  # 1 s: 1 Hz per bin
    assert abs(int(spectrum.argmax()) - 1000) <= 1
    assert 0.45 < np.abs(wave).max() < 0.55  # level kept


@pytest.mark.unit
def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="spectrograms.kind='cqt'"):
        SpectrogramConfig(kind="cqt")


# --- the per-clip stage engine: resumable, atomic --------------------------------------------------------

CALLS: list[str] = []
EXPLODE_AT: set[str] = set()


def _toy_compute(jobs, config):
    out = {}
    for job in jobs:
        if job.id in EXPLODE_AT:
            raise KeyboardInterrupt("killed")  # an interruption in the middle of the stage
        CALLS.append(job.id)
        out[job.id] = {"x": np.full((2, 3), int(job.id[1:]) * config["scale"], np.int32)}
    return out


def _toy_jobs(tmp_path, n=20):
    jobs = []
    for i in range(n):
        path = tmp_path / "in" / f"c{i:02d}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(str(i))
        jobs.append(ClipJob(f"c{i:02d}", str(path)))
    return jobs


@pytest.mark.unit
def test_interrupted_stage_resumes_without_redoing_finished_batches(tmp_path):
    jobs = _toy_jobs(tmp_path)
    out = tmp_path / "work" / "toy.h5"
    CALLS.clear()
    EXPLODE_AT.clear()
    EXPLODE_AT.add("c13")  # dies in the second batch of 8
    with pytest.raises(KeyboardInterrupt):
        run_per_clip("toy", jobs, _toy_compute, {"scale": 2}, out, progress=False)
    assert not out.exists() and CALLS == [f"c{i:02d}" for i in range(13)]

    EXPLODE_AT.clear()
    CALLS.clear()
    run_per_clip("toy", jobs, _toy_compute, {"scale": 2}, out, progress=False)
    assert CALLS == [f"c{i:02d}" for i in range(8, 20)]  # batch 0 was kept, batches 1-2 redone
    assert not list(out.parent.glob(".toy.h5.parts-*"))  # parts are gone once merged

    fresh = tmp_path / "fresh" / "toy.h5"
    run_per_clip("toy", jobs, _toy_compute, {"scale": 2}, fresh, progress=False)
    assert out.read_bytes() == fresh.read_bytes()
    with h5py.File(out) as f:
        assert f["x"]["c07"][()].tolist() == [[14] * 3] * 2 and f.attrs["complete"]

    CALLS.clear()
    run_per_clip("toy", jobs, _toy_compute, {"scale": 2}, out, progress=False)
    assert CALLS == []  # complete and unchanged: nothing to do
    run_per_clip("toy", jobs, _toy_compute, {"scale": 3}, out, progress=False)
    assert len(CALLS) == 20  # a config change redoes everything


@pytest.mark.unit
def test_a_half_written_intermediate_is_never_trusted(tmp_path):
    jobs = _toy_jobs(tmp_path, 3)
    out = tmp_path / "toy.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # what a kill mid-write could leave
    assert not is_complete(out)
    CALLS.clear()
    EXPLODE_AT.clear()
    run_per_clip("toy", jobs, _toy_compute, {"scale": 1}, out, progress=False)
    assert len(CALLS) == 3 and is_complete(out)


@pytest.mark.integration
def test_per_clip_output_does_not_depend_on_workers(tmp_path):
    jobs = _toy_jobs(tmp_path)
    EXPLODE_AT.clear()
    run_per_clip("toy", jobs, _toy_compute, {"scale": 1}, tmp_path / "one.h5", progress=False)
    with LocalExecutor(2) as executor:
        run_per_clip(
            "toy", jobs, _toy_compute, {"scale": 1}, tmp_path / "two.h5", executor=executor, progress=False
        )
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "two.h5").read_bytes()


@pytest.mark.integration
def test_one_local_executor_serves_every_stage_and_runs_elsewhere():
    with LocalExecutor(2) as executor:
        pids = {pid for _, pid in executor.map_unordered(_pid_of, [0, 1, 2, 3])}
        assert os.getpid() not in pids  # the tasks ran in the workers, started once for every stage
        assert sorted(i for i, _ in executor.map_unordered(_pid_of, [5, 6, 7])) == [0, 1, 2]
    assert executor._pool is None  # closed on leaving the block
    with LocalExecutor(1) as inline:
        assert [pid for _, pid in inline.map_unordered(_pid_of, [0, 1])] == [os.getpid()] * 2
    with pytest.raises(ValueError, match="workers=0"):
        LocalExecutor(0)


def _pid_of(_item) -> int:
    return os.getpid()


@pytest.mark.integration
def test_the_resnet_path_never_imports_torch(synth_corpus, tmp_path):
    """torch costs ~1.5 s and ~700 MiB per process: the ResNet-path stages, and so their workers, do
    without it."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipeline.corpora import get_corpus\n"
        "from pipeline.engine import LocalExecutor\n"
        "from pipeline.prepare import PrepareConfig, Run, prepare\n"
        "from pipeline.stages.index import IndexConfig\n"
        "def in_worker(_):\n"
        "    return 'torch' in sys.modules\n"
        "if __name__ == '__main__':\n"
        "    with LocalExecutor(2) as executor:\n"
        f"        run = Run(get_corpus('cremad'), Path({str(synth_corpus)!r}), Path({str(tmp_path)!r}), "
        "PrepareConfig(index=IndexConfig(protocol='speaker-random')), executor, progress=False)\n"
        "        prepare(run, ['index', 'frames', 'spectrograms', 'shards_raw'])\n"
        "        in_workers = [found for _, found in executor.map_unordered(in_worker, range(4))]\n"
        "    assert 'torch' not in sys.modules, 'the main process imported torch'\n"
        "    assert not any(in_workers), 'a worker imported torch'\n"
    )
    script = tmp_path / "no_torch.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "shards" / "raw" / "sizes.json").is_file()


THREADS_IN_A_WORKER = """
import os, sys
def threads(_):
    import cv2, threadpoolctl, torch
    return {
        "blas and openmp": sorted({pool["num_threads"] for pool in threadpoolctl.threadpool_info()}),
        "opencv": cv2.getNumThreads(),
        "torch": torch.get_num_threads(),
    }
if __name__ == "__main__":
    from pipeline.engine import LocalExecutor
    with LocalExecutor(2) as executor:
        found = [result for _, result in executor.map_unordered(threads, range(4))]
    want = {"blas and openmp": [1], "opencv": 1, "torch": 1}
    assert all(got == want for got in found), found
    assert "OMP_NUM_THREADS" not in os.environ, "the calling process keeps its own threads"
"""


@pytest.mark.integration
def test_the_pool_workers_compute_on_one_thread_whatever_the_environment(tmp_path):
    """Without a thread count in the environment the math libraries start one thread per core; in the
    local engine's workers they must not (the bytes of Ray's single-threaded tasks, no oversubscription)."""
    pytest.importorskip("threadpoolctl")  # a dependency of scikit-learn, in the dev extra
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the libraries start with one thread anyway")
    script = tmp_path / "threads.py"
    script.write_text(THREADS_IN_A_WORKER)
    variables = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")
    env = {name: value for name, value in os.environ.items() if name not in variables}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- end to end on the synthetic corpus with defects -------------------------------------------------------

RAW_STAGES = "index,frames,spectrograms,shards_raw"  # the ResNet path only (the cached path has its tests)
PREPARE = [
    "prepare",
    "cremad",
    "--protocol",
    "speaker-random",
    "--size",
    "32",
    "--quiet",
    "--stages",
    RAW_STAGES,
]


@pytest.fixture(scope="module")
def prepared(synth_corpus_defects, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("prepared")
    result = runner.invoke(app, [*PREPARE, "--root", str(synth_corpus_defects), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return synth_corpus_defects, out


def _shard_contents(shard_dir: Path) -> dict[str, list[tuple[str, dict]]]:
    return {p.name: read_shard(p) for p in sorted(shard_dir.glob("*.tar"))}


@pytest.mark.integration
def test_every_defect_is_rejected_with_its_reason(prepared):
    root, out = prepared
    by_id = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    defects = json.loads((root / "synth_defects.json").read_text())
    assert len(defects) >= 15
    for defect in defects:
        record = by_id[defect["id"]]
        expected = defect["expected_reason"]
        if expected in ("ok", "no-face"):  # accepted (`_X.wav`), or usable on the raw path (no face)
            assert record.status == "ok", (defect, record.reason)
        else:
            assert record.status == "rejected", defect
            assert Reason(record.reason.split(":")[0]) == expected, (defect, record.reason)
    assert by_id["1040_ITH_SAD_XX"].fixes == ["wav-name-_X"]


@pytest.mark.integration
def test_every_good_clip_is_in_exactly_one_shard_of_its_split(prepared):
    _, out = prepared
    records = read_manifest(out / "manifest.jsonl")
    good = {r.id: r.split for r in records if r.ok}
    assert len(good) >= 12 and all(good.values())
    shards = _shard_contents(out / "shards" / "raw")
    seen: dict[str, str] = {}
    for name, samples in shards.items():
        for key, _ in samples:
            assert key not in seen, f"{key} in {seen[key]} and {name}"
            seen[key] = name
    assert set(seen) == set(good)
    for key, name in seen.items():
        assert name.startswith(f"{good[key]}-")
    sizes = json.loads((out / "shards" / "raw" / "sizes.json").read_text())
    assert sizes == {name: len(samples) for name, samples in shards.items()}


@pytest.mark.integration
def test_arrays_have_the_documented_shapes_and_dtypes(prepared):
    _, out = prepared
    meta = json.loads((out / "shards" / "raw" / "meta.json").read_text())
    assert meta["fields"] == {
        "spec.npy": {"dtype": "float32", "shape": [257, 188]},  # CREMA-D's default: the authors' log-STFT
        "frames.npy": {"dtype": "uint8", "shape": [3, 32, 32, 3]},
    }
    assert (meta["input_path"], meta["num_classes"], meta["label_names"][0]) == ("raw", 6, "ANG")
    assert (
        meta["config"]["spectrograms"]["kind"] == "stft"
        and meta["config"]["spectrograms"]["hop_length"] == 353
    )
    assert meta["skipped"] == {}
    for samples in _shard_contents(out / "shards" / "raw").values():
        for key, fields in samples:
            assert set(fields) == {"spec.npy", "frames.npy", "json"}
            assert fields["spec.npy"].dtype == np.float32 and fields["spec.npy"].shape == (257, 188)
            assert np.isfinite(fields["spec.npy"]).all()
            assert fields["frames.npy"].dtype == np.uint8 and fields["frames.npy"].shape == (3, 32, 32, 3)
            sample = fields["json"]
            assert sample["id"] == key and set(sample) == {
                "id", "corpus", "label", "label_name", "group", "split", "extra"
            }  # fmt: skip
            assert (
                sample["corpus"] == "cremad"
                and sample["group"] == key[:4]
                and sample["extra"]["actor"] == int(key[:4])
            )
            assert fields["frames.npy"].std() > 0  # a picture, not a blank


@pytest.mark.integration
def test_a_second_run_gives_byte_identical_output_whatever_the_workers(prepared, tmp_path):
    root, out = prepared
    result = runner.invoke(app, [*PREPARE, "--root", str(root), "--out", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    first = sorted(p.name for p in (out / "shards" / "raw").iterdir())
    assert first == sorted(p.name for p in (tmp_path / "shards" / "raw").iterdir())
    for name in first:
        assert (tmp_path / "shards" / "raw" / name).read_bytes() == (
            out / "shards" / "raw" / name
        ).read_bytes()


@pytest.mark.integration
def test_rerun_in_place_skips_finished_stages(prepared, monkeypatch):
    root, out = prepared
    before = {p.name: p.read_bytes() for p in (out / "shards" / "raw").iterdir()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("finished work was redone")

    from pipeline.corpora import base
    from pipeline.stages import frames, spectrograms

    monkeypatch.setattr(base, "validate_clip", must_not_run)
    monkeypatch.setattr(frames, "frames_at_fps", must_not_run)
    monkeypatch.setattr(spectrograms, "spectrogram_of_padded", must_not_run)
    result = runner.invoke(app, [*PREPARE, "--root", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert before == {p.name: p.read_bytes() for p in (out / "shards" / "raw").iterdir()}
    assert "rejected lfs-pointer: 2" in result.output  # the summary is printed again


@pytest.mark.integration
def test_stages_option(prepared, tmp_path):
    root, _ = prepared
    only_index = [*PREPARE[:-1], "index"]
    result = runner.invoke(app, [*only_index, "--root", str(root), "--out", str(tmp_path)])
    assert result.exit_code == 0 and (tmp_path / "manifest.jsonl").is_file()
    assert not (tmp_path / "shards").exists()
    result = runner.invoke(app, [*PREPARE[:-1], "index,nope", "--root", str(root), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown stage(s) nope" in result.output


@pytest.mark.integration
def test_stage_engine_is_shared(prepared):
    """frames and spectrograms write one HDF5 each through run_per_clip, keyed by clip id."""
    _, out = prepared
    for name, dataset in (("frames", "frames"), ("spectrograms", "spec")):
        assert is_complete(out / "work" / f"{name}.h5")
        with h5py.File(out / "work" / f"{name}.h5") as f:
            assert len(f[dataset]) == sum(1 for r in read_manifest(out / "manifest.jsonl") if r.ok)


@pytest.mark.integration
def test_stale_temp_files_of_dead_runs_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f"frames.h5.tmp-{dead_pid}").write_bytes(b"half")
    (tmp_path / f"manifest.jsonl.tmp-{os.getpid()}").write_bytes(b"being written")  # a live writer
    (tmp_path / "frames.h5").write_bytes(b"kept")
    assert remove_stale_temps(tmp_path) == [tmp_path / f"frames.h5.tmp-{dead_pid}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.h5", f"manifest.jsonl.tmp-{os.getpid()}"]


@pytest.mark.unit
def test_psd_kind_is_scipy_signal_spectrogram_with_its_defaults():
    """`psd` is the MLB authors' AVE spectrogram: scipy.signal.spectrogram's defaults, frames inside the clip."""
    from scipy.signal import spectrogram

    config = vars(SpectrogramConfig(kind="psd", sample_rate=16000, seconds=2.0, hop_length=159))
    assert SpectrogramConfig(**config).shape == (257, 1 + (32000 - 512) // 159)
    wave = np.random.default_rng(3).uniform(-1, 1, (2, 32000)).astype(np.float32)
    _, _, psd = spectrogram(wave.astype(np.float64), fs=16000, nperseg=512, noverlap=353)  # [2, 257, T]
    got = spectrogram_batch(wave, config)
    assert got.shape == (2, *SpectrogramConfig(**config).shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.log(psd + 1e-7), atol=1e-3)
    with pytest.raises(ValueError, match="shorter than one psd frame"):
        SpectrogramConfig(kind="psd", seconds=0.01)


@pytest.mark.unit
def test_the_first_channel_or_the_mean_of_a_stereo_recording(tmp_path):
    import soundfile as sf

    left = np.full(16000, 0.5, np.float32)
    sf.write(tmp_path / "stereo.wav", np.stack([left, -left], axis=1), 16000, subtype="FLOAT")
    first = load_fixed_length(
        str(tmp_path / "stereo.wav"), vars(SpectrogramConfig(sample_rate=16000, channel="first"))
    )
    mean = load_fixed_length(str(tmp_path / "stereo.wav"), vars(SpectrogramConfig(sample_rate=16000)))
    assert np.allclose(first, 0.5) and np.allclose(mean, 0.0)
    with pytest.raises(ValueError, match="spectrograms.channel='left'"):
        SpectrogramConfig(channel="left")
