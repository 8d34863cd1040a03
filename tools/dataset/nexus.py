"""NeXus/HDF5 master files following the NXmx application definition (h5py, hdf5plugin).

One file per sweep (all shots of a stills dataset in one file) holds the
geometry as NXtransformations in the McStas frame (z along the beam, y up),
the beam, the goniometer axis and its scan, the detector module, and the
image stack compressed with bitshuffle/LZ4 as Eiger detectors write it.
The layout is described in specs/formats.md ('Datasets: CBF and NXmx').

Geometry, exactly as nanoBragg renders it: the detector's
``depends_on`` chain is ``fast_pixel_direction``/``slow_pixel_direction``
(pixel size along the detector's fast and slow vectors) -> ``module_offset``
-> ``detector_position``, a translation from the sample to the outer corner
of the first pixel (nanoBragg's pix0).  So pixel (slow j, fast i) has its
corner at pix0 + i px fast + j px slow, any detector rotation or two-theta
included.
"""

from __future__ import annotations

import numpy as np

DETECTOR = "/entry/instrument/detector"
MODULE = DETECTOR + "/module"


def _text(group, name, value):
    group.create_dataset(name, data=np.bytes_(value.encode("utf-8")))


def _group(parent, name, nx_class):
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _transformation(group, name, value, kind, vector, depends_on, units):
    """One NXtransformations member: a translation (metres) or rotation (degrees) along ``vector``."""
    data = group.create_dataset(name, data=np.asarray(value, dtype=np.float64))
    data.attrs["transformation_type"] = kind
    data.attrs["vector"] = np.asarray(vector, dtype=np.float64)
    data.attrs["offset"] = np.zeros(3)
    data.attrs["units"] = units
    data.attrs["depends_on"] = depends_on
    return data


def write_master(path, geometry: dict, frames, dtype, omega_deg, osc_deg: float, wavelengths_A,
                 exposure_s: float, title: str = "") -> None:
    """Write an NXmx master file at ``path`` (the caller renames it into place).

    ``geometry`` is a sweep's geometry from the plan (lab-frame vectors and
    ``lab_to_mcstas``); ``frames`` yields the (slow, fast) images in order;
    ``omega_deg`` holds each frame's start angle, ``wavelengths_A`` each
    frame's wavelength (one value is written when they are all equal).
    """
    import h5py
    import hdf5plugin

    M = np.asarray(geometry["lab_to_mcstas"])
    fast = M @ np.asarray(geometry["fdet"])
    slow = M @ np.asarray(geometry["sdet"])
    pix0 = M @ np.asarray(geometry["pix0_m"])
    spindle = M @ np.asarray(geometry["spindle"])
    px = geometry["pixel_size_m"]
    nslow, nfast = geometry["spixels"], geometry["fpixels"]
    omega = np.asarray(omega_deg, dtype=np.float64)
    n = omega.size
    wavelengths = np.asarray(wavelengths_A, dtype=np.float64)

    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = _group(f, "entry", "NXentry")
        entry.attrs["default"] = "data"
        _text(entry, "definition", "NXmx")
        _text(entry, "title", title or "nanoBragg simulation")
        _text(entry, "start_time", "2000-01-01T00:00:00Z")

        source = _group(entry, "source", "NXsource")
        _text(source, "name", "nanoBragg simulation")

        instrument = _group(entry, "instrument", "NXinstrument")
        _text(instrument, "name", "nanoBragg simulation (nanobragg-dataset)")
        beam = _group(instrument, "beam", "NXbeam")
        same = bool(np.all(wavelengths == wavelengths[0]))
        wl = beam.create_dataset("incident_wavelength", data=wavelengths[0] if same else wavelengths)
        wl.attrs["units"] = "angstrom"

        detector = _group(instrument, "detector", "NXdetector")
        _text(detector, "depends_on", DETECTOR + "/transformations/detector_position")
        _text(detector, "description", "nanoBragg simulated pixel detector")
        _text(detector, "type", "pixel")
        _text(detector, "sensor_material", "Silicon")
        for name, value, units in (("sensor_thickness", geometry["thickness_m"], "m"),
                                   ("x_pixel_size", px, "m"), ("y_pixel_size", px, "m"),
                                   ("distance", geometry["distance_m"], "m"),
                                   ("beam_center_x", geometry["beam_center_px"][0], "pixel"),
                                   ("beam_center_y", geometry["beam_center_px"][1], "pixel"),
                                   ("count_time", exposure_s, "s"), ("frame_time", exposure_s, "s")):
            detector.create_dataset(name, data=float(value)).attrs["units"] = units
        if np.dtype(dtype).kind == "u":
            detector.create_dataset("saturation_value", data=int(np.iinfo(dtype).max))
            detector.create_dataset("bit_depth_readout", data=int(np.dtype(dtype).itemsize * 8))

        transformations = _group(detector, "transformations", "NXtransformations")
        distance = float(np.linalg.norm(pix0))
        _transformation(transformations, "detector_position", distance, "translation",
                        pix0 / distance, ".", "m")

        module = _group(detector, "module", "NXdetector_module")
        module.create_dataset("data_origin", data=np.array([0, 0], dtype=np.int64))
        module.create_dataset("data_size", data=np.array([nslow, nfast], dtype=np.int64))
        module.create_dataset("data_stride", data=np.array([1, 1], dtype=np.int64))
        _transformation(module, "module_offset", 0.0, "translation", fast,
                        DETECTOR + "/transformations/detector_position", "m")
        _transformation(module, "fast_pixel_direction", px, "translation", fast, MODULE + "/module_offset", "m")
        _transformation(module, "slow_pixel_direction", px, "translation", slow, MODULE + "/module_offset", "m")

        stack = detector.create_dataset("data", shape=(n, nslow, nfast), dtype=dtype, chunks=(1, nslow, nfast),
                                        **hdf5plugin.Bitshuffle(cname="lz4"))
        for k, frame in enumerate(frames):
            stack[k] = frame

        data = _group(entry, "data", "NXdata")
        data.attrs["signal"] = "data"
        data["data"] = stack                                  # a hard link: one stack, two names

        sample = _group(entry, "sample", "NXsample")
        _text(sample, "name", title or "simulated crystal")
        _text(sample, "depends_on", "/entry/sample/transformations/omega")
        sample_axes = _group(sample, "transformations", "NXtransformations")
        _transformation(sample_axes, "omega", omega, "rotation", spindle, ".", "deg")
        increment = sample_axes.create_dataset("omega_increment_set", data=float(osc_deg))
        increment.attrs["units"] = "deg"
        end = sample_axes.create_dataset("omega_end", data=omega + float(osc_deg))
        end.attrs["units"] = "deg"
