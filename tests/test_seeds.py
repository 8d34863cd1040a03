"""C's random streams share one shuffle table (quirk (p)).

The expected values were produced by the C program with the same command
lines (the tests never run it).  A negative command-line seed gives C a
positive internal seed, which continues on the shuffle table that the
previous stream left; with ``-c_parity`` our outputs must do the same, and in
spec mode every stream has a table of its own.
"""

import numpy as np
import pytest

from reference.cli import parse_args
from reference.run import run

SCENE = ("-cell 50 60 70 90 90 90 -default_F 100 -N 3 -detpixels 6 -pixel 0.5 -distance 50 -lambda 1 "
         "-nopgm -noprogress").split()

# C's noise images (ADU, slow x fast) for SCENE plus the seed flags
C_NOISE = {
    # the noise stream continues on the table the mosaic stream (-mosaic_seed
    # default, one domain, one draw of three numbers) left, with idum 5 or 7
    "-seed -5": [[85, 164, 200, 138, 133, 206], [44, 62, 70, 55, 47, 58], [79, 194, 216, 131, 120, 201],
                 [62, 113, 120, 87, 103, 145], [76, 108, 142, 84, 110, 124], [90, 170, 178, 133, 142, 206]],
    "-seed -7": [[85, 164, 200, 139, 137, 196], [45, 54, 60, 53, 52, 53], [92, 181, 227, 129, 117, 199],
                 [65, 135, 115, 97, 87, 130], [80, 116, 154, 90, 83, 148], [84, 185, 204, 132, 136, 196]],
    # four mosaic domains leave a different table for the same noise seed
    "-seed -5 -mosaic 3 -mosaic_dom 4": [
        [91, 175, 183, 125, 127, 175], [46, 62, 67, 53, 48, 60], [84, 194, 212, 140, 145, 196],
        [72, 131, 133, 91, 103, 141], [68, 112, 139, 99, 99, 159], [94, 182, 206, 128, 142, 195]],
    # a non-negative seed reloads the table: what a stream of its own gives
    "-seed 1": [[76, 169, 166, 125, 133, 195], [46, 58, 56, 51, 45, 62], [77, 177, 221, 128, 128, 198],
                [68, 106, 130, 101, 88, 125], [68, 121, 137, 97, 88, 128], [92, 177, 195, 119, 139, 181]],
}

MISSET_THEN_MOSAIC = "-misset_seed 4 -misset random -mosaic 3 -mosaic_dom 4 -nonoise -mosaic_seed"
# the first two rows of C's float image (photons) for MISSET_THEN_MOSAIC plus the mosaic seed
C_FLOAT_ROWS = {
    "-3": [79.86279296875, 37.83070373535156, 2.368069887161255, 25.537845611572266, 5.894798278808594,
           9.56264591217041, 99.74311828613281, 11.645740509033203, 5.875079154968262, 66.00225067138672,
           8.231258392333984, 2.8568060398101807],
    "-7": [63.89293670654297, 25.636985778808594, 2.79530930519104, 39.14680480957031, 8.366623878479004,
           9.318609237670898, 120.84065246582031, 8.869148254394531, 6.493015289306641, 86.52515411376953,
           7.1027445793151855, 2.192965507507324],
    # with a seed of its own: what -3 and -7 would give without the shared table
    "1": [78.40092468261719, 33.300025939941406, 3.5739641189575195, 27.156780242919922, 5.945693492889404,
          13.331868171691895, 89.9023208618164, 12.531611442565918, 4.992427349090576, 58.65184020996094,
          9.629016876220703, 3.1188833713531494],
}


def _noise(args):
    run(parse_args(args), echo=False)
    raw = open("noiseimage.img", "rb").read()
    assert raw.startswith(b"{\nHEADER_BYTES=512;")
    return np.frombuffer(raw[512:], dtype="<u2").reshape(6, 6).tolist()


@pytest.mark.parametrize("seeds", list(C_NOISE))
def test_noise_seed_continues_on_the_shared_table(seeds):
    assert _noise(SCENE + seeds.split() + ["-c_parity"]) == C_NOISE[seeds]


@pytest.mark.parametrize("seeds", ["-seed -5", "-seed -7"])
def test_spec_mode_streams_have_their_own_table(seeds):
    # a positive internal seed on an empty table is replaced by 1, as C does
    # for the first stream of a run: the same image as -seed 1
    assert _noise(SCENE + seeds.split()) == C_NOISE["-seed 1"]


@pytest.mark.parametrize("mosaic_seed", ["-3", "-7", "1"])
def test_mosaic_seed_continues_on_the_misset_table(mosaic_seed):
    sc, image = run(parse_args(SCENE + MISSET_THEN_MOSAIC.split() + [mosaic_seed, "-c_parity"]), echo=False)
    expected = np.array(C_FLOAT_ROWS[mosaic_seed], dtype=np.float32)
    np.testing.assert_array_equal(image[:2].ravel(), expected)


def test_simulator_uses_the_reference_mosaic_domains():
    """The differentiable Simulator redraws the domains' axes and angles; with -c_parity
    they must continue on the misset's table, giving the reference's matrices."""
    torch = pytest.importorskip("torch")
    from torchsim.simulator import Simulator, axis_angle_matrices

    sim = Simulator.from_args(SCENE + MISSET_THEN_MOSAIC.split() + ["-3", "-c_parity"])
    with torch.no_grad():
        umats = axis_angle_matrices(sim.mosaic_axes, sim.mosaic_fractions * sim.mosaic_spread * np.pi / 180)
    # C rounds each domain's angle to float32: below 1e-8 rad for a 3 degree spread,
    # while a domain drawn from another table is off by up to 0.05
    np.testing.assert_allclose(umats.numpy().reshape(-1, 9), sim.scene.mosaic_umats, rtol=0, atol=1e-7)
