"""How the command line reads flags the C way: our flags left out of the C replay,
and the spellings that C's substring matching accepts.

Where a test states what the C program does, that was checked with the C binary
(the tests never run it).
"""

import pytest

from reference.cli import main, parse_args
from reference.errors import InputError

BASE = "-cell 50 60 70 90 90 90 -default_F 100 -N 3 -detpixels 24 -distance 50 -lambda 1".split()


def parse(extra):
    return parse_args(BASE + extra.split())


# ---------------------------------------------------------------------------
# our flags are not part of the C command line that -c_parity replays
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra, curved", [
    # C ignores a last -curved_det (its handler wants argc > i+1): the C binary's
    # image with -curved_det last equals its image without the flag
    ("-curved_det -c_parity", False),
    ("-curved_det -trace_pixel 3 4 -c_parity -engine torch", False),
    ("-curved_det -memory_gb 2 -dtype float32 -device cpu -c_parity", False),
    ("-curved_det -nopgm -c_parity", True),
    ("-c_parity -curved_det", False),
    ("-curved_det", True),                      # spec mode: the flag means what it says
])
def test_our_flags_do_not_count_in_cs_argc(extra, curved):
    assert parse(extra).curved_detector is curved


@pytest.mark.parametrize("extra", [
    "-misset random -misset_seed 5 -c_parity -engine torch",
    "-misset random -misset_seed 5 -engine torch -c_parity",
])
def test_our_flags_are_not_read_as_c_values(extra):
    # -misset_seed also runs C's -misset handler, which needs three more arguments:
    # without ours there are none, so the random misset stays (C binary: the
    # "random orientation misset angles" line, from seed 5)
    cfg = parse(extra)
    assert cfg.misset_random and cfg.misset is None and cfg.misset_seed == -5
    assert cfg.engine == "torch" and cfg.c_parity      # ours still apply


def test_our_flags_apply_with_c_parity():
    cfg = parse("-c_parity -trace_pixel 3 4 -memory_gb 2 -dtype float32 -device cpu")
    assert (cfg.trace_pixel, cfg.memory_gb, cfg.dtype, cfg.device) == ((3, 4), 2.0, "float32", "cpu")


# ---------------------------------------------------------------------------
# spellings that C's substring tests accept
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("parity", ["", " -c_parity"])
@pytest.mark.parametrize("extra, attr, value, canonical", [
    ("-matrix A.mat", "mat_file", "A.mat", "-mat"),           # the upstream README's spelling
    ("-hklfile P1.hkl", "hkl_file", "P1.hkl", "-hkl"),
    ("-lambda_A 1.5", "lambda0", 1.5e-10, "-lambda"),
    ("-mosaic_domains_n 3", "mosaic_domains", 3, "-mosaic_dom"),
    ("-curved_detector -nopgm", "curved_detector", True, "-curved_det"),
    ("-oversample_thickness", "oversample_thick", True, "-oversample_thick"),
])
def test_c_spelling_reads_as_its_flag(extra, attr, value, canonical, parity):
    cfg = parse(extra + parity)
    assert getattr(cfg, attr) == value
    token = extra.split()[0]
    assert cfg.spelling_notes == [f"reading {token} as {canonical}"]


def test_c_spelling_of_misset_random():
    cfg = parse("-missetting random")
    assert cfg.misset_random and cfg.spelling_notes == ["reading -missetting as -misset"]


@pytest.mark.parametrize("parity", ["", " -c_parity"])
def test_c_spelling_of_mask(parity):
    # C takes -mask in its own scan of the arguments, with a substring test too
    with pytest.raises(InputError, match="cannot read missing.img"):
        parse("-maskfile missing.img" + parity)


def test_exact_spellings_give_no_note():
    assert parse("-mat A.mat -hkl P1.hkl -mosaic_domains 3").spelling_notes == []


@pytest.mark.parametrize("extra, message", [
    ("-pixelsize 0", "-pixelsize must be positive"),
    ("-pixelsize -N 3", "-pixelsize needs 1 value"),
    ("-fdet_vectors 0 1 -N 3", "-fdet_vectors needs 3 values"),
    ("-cells -N 3", "-cells needs at least one value"),
    ("-detpixels_xy 2.5", "-detpixels_xy expects a whole number"),
])
def test_c_spelling_values_are_checked_like_the_flags(extra, message):
    with pytest.raises(InputError, match=message):
        parse(extra)


def test_c_spelling_takes_its_flags_values():
    cfg = parse("-cells 40 45 -missetting 1 2 3 -detpixels_xy 10")
    assert cfg.cell[:2] == [40.0, 45.0]
    assert cfg.misset == pytest.approx((1 / 57.29577951308232, 2 / 57.29577951308232, 3 / 57.29577951308232))
    assert cfg.fpixels == 10


def test_ambiguous_spelling_is_an_error_in_spec_mode():
    # C runs both -misset (reading the next three arguments as angles) and -misset_seed
    with pytest.raises(InputError, match="ambiguous flag '-misset_seeds'.*-misset, -misset_seed"):
        parse("-misset_seeds 5")


def test_ambiguous_spelling_is_replayed_with_c_parity():
    # C binary: with -misset random first, "-misset_seeds 45 -lambda 1" replaces the
    # random misset by the angles 45, 0 (atof("-lambda")), 1 degrees
    cfg = parse("-misset random -misset_seeds 45 -lambda 1 -c_parity")
    assert cfg.misset_seed == -45 and not cfg.misset_random
    assert cfg.misset == pytest.approx((45 / 57.29577951308232, 0.0, 1 / 57.29577951308232))
    assert cfg.spelling_notes == ["reading -misset_seeds as -misset, -misset_seed, as the C program does"]


@pytest.mark.parametrize("extra, hint", [
    ("-distnce 100", "-distance"),
    ("-polarization 0.9", "-polar"),           # no C handler accepts it: C ignores it
    ("-curved_detector", "-curved_det"),       # C needs one more argument after it
    ("-fdet_vectors 0 1", "-fdet_vector"),     # C needs three more arguments after it
])
def test_token_c_ignores_is_unknown(extra, hint):
    with pytest.raises(InputError, match=f"unknown flag '{extra.split()[0]}' \\(did you mean {hint}\\?\\)"):
        parse(extra)


def test_note_is_printed_once_on_stderr(capsys):
    from pathlib import Path
    hkl = Path(__file__).resolve().parents[1] / "examples" / "example.hkl"
    argv = ["-cell", "40", "50", "60", "90", "90", "90", "-hklfile", str(hkl), "-N", "2", "-detpixels", "8",
            "-nonoise", "-nopgm", "-noprogress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.count("nanobragg: note: reading -hklfile as -hkl\n") == 1
    assert "reading -hklfile" not in captured.out
