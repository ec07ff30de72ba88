"""The tar parser of shards/tar.py against what other tools write and what hostile shards hold:
it must read every member `tarfile` reads, byte for byte, and refuse the rest without reading it."""

import io
import shutil
import subprocess
import tarfile

import hostile
import pytest

from shards.tar import NOT_A_TAR, TRUNCATED, HashingReader, TarError, tar_members


def members_of(data: bytes, max_member: int = 64 << 20):
    return list(tar_members(io.BufferedReader(io.BytesIO(data)), max_member))


def tarfile_members(data: bytes):
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(ti.name, tf.extractfile(ti).read() if ti.isfile() else None) for ti in tf]


NAMES = [
    "k.jpg",
    "a" * 99 + ".jpg",  # fills the name field
    "dir/" * 30 + "deep.sem.png",  # needs the ustar prefix field or a long-name header
    "x" * 300 + ".json",  # longer than name + prefix: pax path / GNU long name
    "caf\u00e9_\u732b.cls",  # non-ASCII: a pax path
    "empty.inst.png",
]


@pytest.mark.parametrize("format_", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_reads_what_tarfile_writes(format_):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format_) as tf:
        for i, name in enumerate(NAMES):
            if format_ == tarfile.USTAR_FORMAT and (len(name) > 100 and "/" not in name or len(name) > 255):
                continue  # ustar holds neither (the deep path goes into its prefix field)
            if format_ == tarfile.USTAR_FORMAT and not name.isascii():
                continue
            data = b"" if name.startswith("empty") else bytes(range(256)) * (i + 1) + b"\xff" * i
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 2**33 if format_ != tarfile.USTAR_FORMAT else 0  # beyond 11 octal digits: base-256/pax
            tf.addfile(ti, io.BytesIO(data))
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    data = buf.getvalue()
    got = members_of(data)
    want = tarfile_members(data)
    assert [(n, d) for n, d, _ in got] == want
    assert got[-1][2] == "member is not a regular file (directory)"


def test_reads_what_gnu_tar_writes(tmp_path):
    if not shutil.which("tar"):
        pytest.skip("no tar binary")
    src = tmp_path / "src"
    (src / ("d" * 120)).mkdir(parents=True)
    (src / ("d" * 120) / ("f" * 130 + ".jpg")).write_bytes(b"payload" * 1000)
    (src / "link.jpg").symlink_to("elsewhere")
    for fmt_ in ("gnu", "posix", "ustar"):
        out = tmp_path / f"{fmt_}.tar"
        r = subprocess.run(["tar", f"--format={fmt_}", "-cf", str(out), "-C", str(src), "."], capture_output=True)
        if r.returncode:
            continue  # ustar cannot hold the long name
        data = out.read_bytes()
        assert [(n, d) for n, d, _ in members_of(data)] == tarfile_members(data)


def test_a_member_over_the_cap_is_read_past_and_still_hashed(tmp_path):
    big = bytes(range(256)) * 4096  # 1 MiB
    hostile.write_tar(tmp_path / "t.tar", [("a.jpg", b"small"), ("b.jpg", big), ("c.jpg", b"after")])
    data = (tmp_path / "t.tar").read_bytes()
    h = HashingReader(io.BytesIO(data))
    got = list(tar_members(io.BufferedReader(h), max_member=1000))
    assert [(n, d) for n, d, _ in got] == [("a.jpg", b"small"), ("b.jpg", None), ("c.jpg", b"after")]
    assert got[1][2] == f"member of {len(big)} bytes exceeds the 1000-byte limit"
    h.drain()
    assert h.size == len(data)


@pytest.mark.parametrize(
    "data, code, message",
    [
        (b"", NOT_A_TAR, "not a tar archive (empty file)"),
        (b"<html>403</html>" * 64, NOT_A_TAR, "not a tar archive (bad header checksum)"),
        (b"\0" * 100, NOT_A_TAR, "not a tar archive: 100-byte block at 0"),
    ],
    ids=["empty", "html", "short"],
)
def test_not_a_tar(data, code, message):
    with pytest.raises(TarError) as e:
        members_of(data)
    assert (e.value.code, str(e.value)) == (code, message)


def test_truncations_and_corruptions(tmp_path):
    hostile.write_tar(tmp_path / "t.tar", [("a.jpg", b"x" * 2000), ("b.jpg", b"y" * 10)])
    data = (tmp_path / "t.tar").read_bytes()
    with pytest.raises(TarError, match="truncated tar: a.jpg has 1000 of 2000 bytes") as e:
        members_of(data[: 512 + 1000])  # a.jpg's header, then half of its data
    assert e.value.code == TRUNCATED
    end = len(data) - 1024
    with pytest.raises(TarError, match="no end-of-archive marker"):
        members_of(data[:end])  # cut exactly at a member boundary
    corrupt = bytearray(data)
    corrupt[512 * 5 + 10] ^= 0xFF  # the second member's header
    with pytest.raises(TarError, match="bad header checksum at byte"):
        members_of(bytes(corrupt))


def test_hostile_size_fields_cost_nothing():
    hdr = bytearray(hostile.gnu_sparse_header("a.jpg", realsize=1 << 40)[:512])
    hdr[156:157] = b"0"  # a regular member claiming 2**64 - 1 bytes in base-256
    hdr[124:136] = b"\xff" + b"\xff" * 11
    hdr[148:156] = b"        "
    hdr[148:156] = f"{sum(hdr):06o}\0 ".encode()
    with pytest.raises(TarError, match="negative size|ends early|truncated"):
        members_of(bytes(hdr) + b"\0" * 1024)
    hdr[124:136] = b"\x80" + (1 << 80).to_bytes(11, "big")
    hdr[148:156] = b"        "
    hdr[148:156] = f"{sum(hdr):06o}\0 ".encode()
    with pytest.raises(TarError, match="truncated tar: a.jpg ends early"):
        members_of(bytes(hdr) + b"\0" * 1024)
