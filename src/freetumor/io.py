"""CT input and output: the :class:`Volume` and NIfTI / DICOM readers and writers.

A :class:`Volume` is a voxel array in the file's own voxel order together with
the 4x4 affine that maps voxel indices to RAS+ millimetres (nibabel's
convention). Nothing in freetumor reorients or resamples a user's scan unless
it is asked to; outputs are written on the input's grid with its header.

Example:
    >>> import numpy as np
    >>> vol = Volume(np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    >>> vol.spacing
    (0.8, 0.8, 2.5)
    >>> vol.orientation
    ('R', 'A', 'S')
    >>> vol.axis_of("S")
    2
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from nibabel.filebasedimages import ImageFileError
import nibabel as nib

from .errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# Physical RAS axis index for each letter nibabel may report.
_AXIS_LETTERS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


@dataclass
class Volume:
    """A 3D image or label map with its geometry.

    Args:
        array: voxel values, shape ``(I, J, K)`` in the file's voxel order.
        affine: 4x4 matrix from voxel index to RAS+ millimetres.
        header: the NIfTI header it was read with (kept when saving), or ``None``.
        path: where it was read from, used in error messages.
    """

    array: np.ndarray
    affine: np.ndarray
    header: object | None = None
    path: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(self.name, f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim != 3:
            raise InputError(self.name, f"expected a 3D volume, got shape {tuple(self.array.shape)}")

    @property
    def name(self) -> str:
        return self.path or "<array>"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each voxel axis (norms of the affine's columns)."""
        cols = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(round(float(c), 6) for c in cols)  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Closest anatomical direction of each voxel axis, e.g. ``('L', 'P', 'S')``."""
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    def physical_axes(self) -> tuple[int, int, int]:
        """For each voxel axis, the RAS axis (0 = x, 1 = y, 2 = z) it runs closest to."""
        return tuple(_AXIS_LETTERS[c] for c in self.orientation)  # type: ignore[return-value]

    def axis_of(self, letter: str) -> int:
        """The voxel axis that runs closest to an anatomical direction ('S', 'R', 'A', ...)."""
        return self.physical_axes().index(_AXIS_LETTERS[letter.upper()])

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume with the same geometry and header and another array."""
        return Volume(array, self.affine.copy(), self.header, self.path, dict(self.meta))

    def voxel_to_mm(self, ijk) -> np.ndarray:
        """Voxel coordinates (..., 3) to RAS+ millimetres."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


# File stems that name no case (``LUNG1-001/image.nii.gz``): the case is the parent folder's name.
GENERIC_STEMS = frozenset({"image", "images", "ct", "img", "scan", "volume", "data"})


def case_name(path: str | os.PathLike) -> str:
    """The case id of an image path: file name without ``.nii.gz`` / ``.nii`` (or a DICOM folder's
    name); when that is generic (:data:`GENERIC_STEMS`, any case), the parent folder's name.

    Every case id derived from a file name goes through here (outputs of ``synthesize``,
    ``synthesize-batch``, ``organs``, ``predict``, ``evaluate``, datalist checks).

    Example:
        >>> case_name("/d/LUNG1-001/image.nii.gz"), case_name("/d/LUNG1-001/CT.nii"), case_name("/d/a.nii.gz")
        ('LUNG1-001', 'LUNG1-001', 'a')
    """
    p = Path(path)
    name = p.name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    if name.lower() in GENERIC_STEMS:
        parent = Path(os.path.abspath(p)).parent.name  # absolute: ``image.nii.gz`` in the case's folder
        if parent:
            return parent
    return name


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI file or a folder holding one DICOM series.

    Raises:
        InputError: missing, unreadable, truncated or not 3D.

    Example:
        >>> import tempfile, numpy as np, os
        >>> d = tempfile.mkdtemp()
        >>> save_volume(Volume(np.ones((3, 3, 3), np.int16), np.eye(4)), os.path.join(d, "a.nii.gz"))
        >>> load_volume(os.path.join(d, "a.nii.gz")).shape
        (3, 3, 3)
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        return _load_dicom_series(p)
    if is_nifti(p):
        return _load_nifti(p)
    if p.suffix.lower() == ".dcm":
        raise InputError(p, "is a single DICOM file; pass the folder that holds the whole series")
    raise InputError(p, "unknown format: expected a .nii/.nii.gz file or a DICOM series folder")


DEFLATE_MAX_RATIO = 1100  # a gzip (deflate) stream expands at most about 1032-fold


def max_volume_bytes() -> int:
    """The largest volume read into memory (``FREETUMOR_MAX_VOLUME_GB``, default 16 GiB): a header that
    claims more is refused before any voxel is read."""
    try:
        return int(float(os.environ.get("FREETUMOR_MAX_VOLUME_GB", "16")) * 2**30)
    except ValueError:
        return 16 * 2**30


def check_claimed_size(p: Path, shape, dtype, offset: int = 0) -> None:
    """Refuse a NIfTI whose header claims more voxels than its file can hold (uncompressed: the exact
    size; gzip: deflate's largest ratio) or than the memory budget, before reading any voxel.

    >>> try:
    ...     check_claimed_size(Path("x.nii.gz"), (30000, 30000, 30000), np.dtype(np.int16))
    ... except InputError as exc:
    ...     print(exc.problem[:60])
    header claims 30000 x 30000 x 30000 voxels (54000.0 GB), mor
    """
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    claimed = n * np.dtype(dtype).itemsize
    in_memory = n * max(np.dtype(dtype).itemsize, 4)  # scaled integers are read as floats
    dims = " x ".join(str(int(d)) for d in shape)
    budget = max_volume_bytes()
    if in_memory > budget:
        raise InputError(p, f"header claims {dims} voxels ({claimed / 1e9:.1f} GB), more than the "
                            f"{budget / 2**30:g} GiB memory budget (FREETUMOR_MAX_VOLUME_GB)")
    try:
        size = p.stat().st_size
    except OSError:
        return
    gz = p.name.lower().endswith(".gz")
    if (gz and claimed > (size + 1) * DEFLATE_MAX_RATIO) or (not gz and claimed + offset > size):
        raise InputError(p, f"header claims {dims} voxels ({claimed / 1e6:.1f} MB) but the file holds "
                            f"{size} bytes (truncated or a false header)")


def _load_nifti(p: Path) -> Volume:
    unreadable = (ImageFileError, EOFError, OSError, zlib.error, ValueError)
    try:
        img = nib.load(str(p))
        header = (img.header.get_data_shape(), img.get_data_dtype(), int(img.header.get("vox_offset", 0) or 0))
    except unreadable as exc:
        raise InputError(p, f"cannot read NIfTI (truncated or corrupt): {_short(exc)}") from None
    check_claimed_size(p, *header)  # before any voxel is read
    try:
        array = np.asanyarray(img.dataobj)
    except unreadable as exc:
        raise InputError(p, f"cannot read NIfTI (truncated or corrupt): {_short(exc)}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(p, f"is not a NIfTI image ({type(img).__name__})")
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(p, f"expected a 3D volume, got shape {tuple(array.shape)}")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(p, "has no valid affine (voxel-to-world matrix)")
    meta = {}
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    disk = img.get_data_dtype()
    if np.issubdtype(disk, np.integer) and (slope != 1.0 or inter != 0.0):
        # integers with scl_slope / scl_inter read as floats: written back in the same type and scaling
        meta["stored_as"] = (disk.str, float(slope), float(inter))
    return Volume(array, affine, img.header, str(p), meta)


def _load_dicom_series(p: Path) -> Volume:
    import SimpleITK as sitk  # deferred: SimpleITK (0.5 s to import) is needed only for DICOM folders

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(p))
    except RuntimeError as exc:
        raise InputError(p, f"cannot scan for DICOM: {_short(exc)}") from None
    if not series:
        raise InputError(p, "no DICOM series found in this folder")
    if len(series) > 1:
        raise InputError(p, f"holds {len(series)} DICOM series; pass a folder with exactly one")
    files = reader.GetGDCMSeriesFileNames(str(p), series[0])
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(p, f"cannot read DICOM series: {_short(exc)}") from None
    if img.GetDimension() != 3:
        raise InputError(p, f"expected a 3D series, got {img.GetDimension()}D")
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    return Volume(np.ascontiguousarray(array), affine, None, str(p), {"dicom_files": len(files)})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_temp(path: Path, suffix: str = "") -> str:
    """A temporary file beside ``path`` with the permissions a plain ``open`` would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
    return tmp


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def _header_for(vol: Volume):
    if isinstance(vol.header, (nib.Nifti1Header, nib.Nifti2Header)):
        hdr = vol.header.copy()
    else:
        hdr = nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
    stored_as = vol.meta.get("stored_as")
    if stored_as is not None and np.issubdtype(vol.array.dtype, np.floating):
        hdr.set_data_dtype(np.dtype(stored_as[0]))  # the input's type (see to_nifti for the scaling)
    else:
        hdr.set_data_dtype(vol.array.dtype)
    if np.issubdtype(vol.array.dtype, np.integer):
        hdr.set_slope_inter(1.0, 0.0)
    return hdr


def _stored_raw(vol: Volume):
    """(raw integers, (slope, intercept)) that store a float volume read from scaled integers in
    the same type and scaling, when every value fits; else (None, None), and nibabel chooses a
    scaling for the input's type."""
    stored_as = vol.meta.get("stored_as")
    if stored_as is None or not np.issubdtype(vol.array.dtype, np.floating):
        return None, None
    dtype, slope, inter = np.dtype(stored_as[0]), float(stored_as[1]), float(stored_as[2])
    if not (np.isfinite(vol.array).all() and slope != 0 and np.isfinite(slope) and np.isfinite(inter)):
        return None, None
    raw = np.rint((vol.array.astype(np.float64) - inter) / slope)
    info = np.iinfo(dtype)
    if raw.size and (raw.min() < info.min or raw.max() > info.max):
        return None, None
    return raw.astype(dtype), (slope, inter)


def to_nifti(vol: Volume):
    """A nibabel image with the volume's affine and (a copy of) its header."""
    hdr = _header_for(vol)
    cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    raw, scaling = _stored_raw(vol)
    img = cls(vol.array if raw is None else raw, vol.affine, header=hdr)
    if scaling is not None:
        img.header.set_slope_inter(*scaling)  # written as given: raw integers, the input's slope and intercept
    if vol.header is None:
        img.set_qform(vol.affine, code=1)
        img.set_sform(vol.affine, code=1)
    return img


def save_volume(vol: Volume, path: str | os.PathLike) -> None:
    """Write a volume as NIfTI atomically (temporary name, then rename).

    The input's header is kept (data type, qform/sform codes, descriptions).
    """
    path = Path(path)
    if not is_nifti(path):
        raise InputError(path, "output must end in .nii or .nii.gz")
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        img = to_nifti(vol)
        if suffix == ".nii.gz":
            _write_gzip_parallel(img.to_bytes(), tmp)
        else:
            nib.save(img, tmp)


# nibabel's own default; level 1 is fast and CT compresses nearly as well as at level 6.
GZIP_LEVEL = 1
_GZIP_CHUNK = 4 << 20


def _gzip_member(chunk: memoryview) -> bytes:
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: a complete gzip member
    return comp.compress(chunk) + comp.flush()


def _write_gzip_parallel(raw: bytes, path: str) -> None:
    """Gzip ``raw`` into ``path`` as concatenated members compressed on all cores.

    A multi-member gzip file is standard (RFC 1952) and every NIfTI reader that
    uses zlib or Python's gzip (nibabel, ITK/SimpleITK, FSL, MRtrix) reads it;
    zlib releases the GIL, so the members are compressed in parallel threads.
    """
    view = memoryview(raw)
    chunks = [view[i : i + _GZIP_CHUNK] for i in range(0, len(view), _GZIP_CHUNK)] or [view]
    workers = max(1, min(len(chunks), os.cpu_count() or 1, 8))
    with open(path, "wb") as fh:
        if workers == 1:
            for c in chunks:
                fh.write(_gzip_member(c))
        else:
            with ThreadPoolExecutor(workers) as pool:
                for member in pool.map(_gzip_member, chunks):
                    fh.write(member)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a small file atomically."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block succeeds.

    On failure the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> with atomic_path(target) as tmp:
        ...     _ = open(tmp, "w").write("done")
        >>> open(target).read()
        'done'
    """
    path = Path(path)
    refuse_special(path, "a regular file")  # the last line of defence: os.replace would swap a device node
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Collect a command's outputs in a hidden folder beside ``out_dir``; move them in on success.

    If the block raises, the staging folder is removed and ``out_dir`` is left exactly
    as it was (not even created), so a failed command writes nothing.

    Example:
        >>> import tempfile, os
        >>> root = tempfile.mkdtemp(); out = os.path.join(root, "out")
        >>> with staged_output(out) as stage:
        ...     _ = (stage / "a.txt").write_text("hi")
        >>> sorted(os.listdir(out))
        ['a.txt']
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        out.mkdir(exist_ok=True)
        for item in sorted(stage.iterdir()):
            target = out / item.name
            if target.is_dir() and item.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _writable_from(path: Path, shown: Path) -> None:
    """Refuse when ``path`` (a folder to create or use) cannot be made or written."""
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(shown, f"cannot be created: {probe} is a file, not a folder")
    if not probe.is_dir():
        raise InputError(shown, f"cannot be created: {probe} does not resolve")
    try:  # a real try (permissions, read-only or special file systems, root): made and removed at once
        os.rmdir(tempfile.mkdtemp(prefix=".freetumor-probe-", dir=probe))
    except OSError as exc:
        raise InputError(shown, f"cannot be written: {exc.strerror or type(exc).__name__} in {probe}") from None


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (a device, FIFO or
    socket: writing there must never replace it), else ``None``.

    >>> special_kind(Path("/dev/null")), special_kind(Path("/nonexistent-freetumor"))
    ('a character device', None)
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def refuse_special(path: Path, wanted: str) -> None:
    """One-line :class:`InputError` when ``path`` is a device, FIFO or socket (:func:`special_kind`),
    where ``wanted`` (``"a folder"``, ``"a regular file"``) was to be written."""
    kind = special_kind(path)
    if kind:
        raise InputError(path, f"output path is {kind}, not {wanted}; nothing is written there")


STAGING_SUFFIX_BYTES = 16  # what staging adds to an output's name: ".NAME.tmp-XXXXXXXX"


def check_name_lengths(path: str | os.PathLike) -> None:
    """Refuse (one line) an output path the file system cannot hold: a name longer than its
    ``NAME_MAX`` (255 bytes on most), the output's own name less the room its staging copy
    (``.NAME.tmp-*``) needs, or a whole path past ``PATH_MAX``; checked before anything is touched
    (the system's ENAMETOOLONG would otherwise surface from the first ``stat``).

    Example:
        >>> try:
        ...     check_name_lengths("out/" + "a" * 300)
        ... except InputError as exc:
        ...     print(exc.problem)
        the name 'aaaaaaaaaaaaaaaaaaaa...' is 300 bytes long; the file system allows 239 for an output (255 less 16 for its staging copy)
    """
    p = Path(path)
    name_max, path_max = 255, 4096
    try:
        name_max = os.pathconf(_existing_ancestor(p), "PC_NAME_MAX")
        path_max = os.pathconf(_existing_ancestor(p), "PC_PATH_MAX")
    except (OSError, ValueError):
        pass
    parts = p.parts
    for i, part in enumerate(parts):
        n = len(os.fsencode(part))
        last = i == len(parts) - 1
        limit = name_max - STAGING_SUFFIX_BYTES if last else name_max
        if n > limit:
            shown = part if len(part) <= 20 else part[:20] + "..."
            room = f" for an output ({name_max} less {STAGING_SUFFIX_BYTES} for its staging copy)" if last else ""
            raise InputError(p, f"the name {shown!r} is {n} bytes long; the file system allows {limit}{room}")
    total = len(os.fsencode(os.path.abspath(p))) + STAGING_SUFFIX_BYTES
    if total >= path_max:
        raise InputError(p, f"the path is {total - STAGING_SUFFIX_BYTES} bytes long; the file system allows "
                            f"{path_max - 1 - STAGING_SUFFIX_BYTES} for an output")


def _existing_ancestor(p: Path) -> str:
    """The nearest folder above ``p`` (or ``p``) that exists, without stat'ing names that are too long."""
    probe = os.path.abspath(p)
    while True:
        parent = os.path.dirname(probe)
        try:
            if os.path.isdir(probe):
                return probe
        except (OSError, ValueError):
            pass
        if parent == probe:
            return probe
        probe = parent


def check_output_folder(out_dir: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that cannot be made or written (one-line :class:`InputError`).

    An existing file, a path under a file, a folder without write permission.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "f"); _ = open(f, "w").write("x")
        >>> try:
        ...     check_output_folder(os.path.join(f, "out"))
        ... except InputError as exc:
        ...     print(exc.problem == f"cannot be created: {f} is a file, not a folder")
        True
    """
    if str(out_dir) == "":
        raise InputError("--out", "empty output path")
    out = Path(out_dir)
    check_name_lengths(out)
    refuse_special(out, "a folder")
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    _writable_from(out, out)


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file whose folder cannot be made or written, a folder, or an
    existing device, FIFO or socket (an atomic write would replace it with a regular file)."""
    if str(path) == "":
        raise InputError("--out", "empty output path")
    p = Path(path)
    check_name_lengths(p)
    refuse_special(p, "a regular file")
    if p.is_dir():
        raise InputError(p, "output path is a folder, not a file")
    _writable_from(p.parent, p)


def clean_staging(out_dir: str | os.PathLike) -> int:
    """Remove the staging folders (``.<name>.tmp-*``) that an interrupted :func:`staged_output` of
    ``out_dir`` left beside it; returns how many. Only for an output no other process is writing."""
    out = Path(out_dir)
    n = 0
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.tmp-*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    """True when two volumes share shape and affine (within ``tol_mm`` millimetres)."""
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a.affine, b.affine, atol=tol_mm, rtol=1e-5))


def check_ct_intensity(image: Volume) -> None:
    """Reject images that cannot be CT in Hounsfield units (one-line :class:`InputError`)."""
    arr = image.array
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(image.name, f"contains {n} NaN or infinite voxels")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -10000 or hi > 40000:
        raise InputError(image.name, f"intensity range {lo:g}..{hi:g} HU is outside any CT range")
    if hi - lo < 200:
        raise InputError(image.name, f"intensity range {lo:g}..{hi:g} is too narrow for CT in HU (normalised image?)")
    if lo >= 0:
        raise InputError(image.name, f"no value below 0 (min {lo:g}): not Hounsfield units; CT has air and fat below 0 HU")


def check_same_grid(image: Volume, label: Volume) -> None:
    """Raise :class:`InputError` (naming the label) when image and label grids differ."""
    if image.shape != label.shape:
        raise InputError(label.name, f"shape {label.shape} does not match image {image.shape}")
    if not same_grid(image, label):
        diff = float(np.abs(image.affine - label.affine).max())
        raise InputError(label.name, f"affine does not match the image's (max difference {diff:.3g})")
