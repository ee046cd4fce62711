"""Differences QEMU's iotests found (scripts/iotests), each as a test of its own that needs
none of the iotests' sources: the image is built here, qemu-img and qimg work on copies of it,
and the results are compared (against both oracles, through the fixtures)."""
from __future__ import annotations

import os
import shutil
import struct

import pytest
from conftest import as_qemu


def _l2_offset(path) -> int:
    d = path.read_bytes()
    l1 = struct.unpack(">Q", d[40:48])[0]
    return struct.unpack(">Q", d[l1:l1 + 8])[0] & 0x00FFFFFFFFFFFE00


def test_repair_of_unaligned_zero_cluster_keeps_backing_data(tmp_path, qemu_img, qemu_io, qimg):
    """iotest 271 ("Corrupted L2 entry, no allocated subclusters"): check -r all repairs an
    extended L2 entry with an unaligned offset and only zero subclusters as QEMU does: the
    offset goes, the zero subclusters stay zero and the others read the backing file again."""
    base, img = tmp_path / "base.raw", tmp_path / "t.qcow2"
    assert qemu_img("create", "-q", "-f", "raw", str(base), "128k").returncode == 0
    assert qemu_io("-f", "raw", "-c", "write -P 0xff 0 128k", str(base)).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-F", "raw", "-b", "base.raw",
                    str(img)).returncode == 0
    assert qemu_io("-c", "write -P 1 4k 2k", "-c", "write -z 4k 2k", str(img)).returncode == 0
    with open(img, "r+b") as f:  # the cluster's offset made unaligned
        f.seek(_l2_offset(img) + 6)
        f.write(b"\x02")
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    shutil.copyfile(img, theirs)
    shutil.copyfile(img, mine)
    q = qemu_img("check", "-r", "all", str(theirs))
    i = qimg("check", "-r", "all", str(mine))
    assert (i.returncode, as_qemu(i.stdout), sorted(as_qemu(i.stderr).splitlines())) == \
        (q.returncode, q.stdout.replace(str(theirs), str(mine)), sorted(q.stderr.splitlines()))
    assert mine.read_bytes() == theirs.read_bytes()
    r = qemu_io("-c", "read -P 0xff 0 4k", "-c", "read -P 0 4k 2k", "-c", "read -P 0xff 6k 122k", str(mine))
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout


def _names_same(q, i, *pairs):
    """(exit code, stdout, stderr) of qemu-img's run ``q`` and qimg's ``i`` are the same, with
    each (theirs, mine) pair of names in qemu-img's outputs read as qimg's."""
    qout, qerr = q.stdout, q.stderr
    for theirs, mine in pairs:
        qout, qerr = qout.replace(theirs, mine), qerr.replace(theirs, mine)
    assert (i.returncode, as_qemu(i.stdout), as_qemu(i.stderr)) == (q.returncode, qout, qerr)


@pytest.mark.parametrize("name", [
    # QEMU's JSON dialect: strings in single quotes (iotests 020, 110, 150, 162 write them so)
    "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'T'}}",
    "json:{'driver': \"qcow2\", 'file': {'driver': 'file', 'filename': 'T'}}",
    "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'T\\'x'}}",
    "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'T\"x'}}",
    # an unterminated string is the lexer's "stray" token, the rest of the name
    "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'T}}",
    'json:{"driver": "qcow2", "file": "T}  ',
])
def test_json_names_in_qemus_dialect(tmp_path, qemu_img, qimg, name):
    img = tmp_path / "t.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(img), "1M").returncode == 0
    name = name.replace("T", str(img))
    _names_same(qemu_img("info", name), qimg("info", name))


@pytest.mark.parametrize("fmt", ["qcow2", "qcow", "qed", "vmdk"])
def test_commit_into_a_blkdebug_backing_fails_as_injected(tmp_path, qemu_img, qemu_io, qimg, fmt):
    """iotest 020 ("Testing failing commit"): the backing file is a json: node over blkdebug
    that fails the first data write (event write_aio) with ENOSPC; commit reopens that node
    (not the plain file under it) and fails as qemu-img does. vmdk creates the overlay over
    the json: name (it reads the backing file's CID)."""
    base = tmp_path / f"b.{fmt}"
    assert qemu_img("create", "-q", "-f", fmt, str(base), "1M").returncode == 0
    backing = (f"json:{{'driver': '{fmt}', 'file': {{'driver': 'blkdebug', 'inject-error': "
               f"[{{'event': 'write_aio', 'errno': 28, 'once': true}}], "
               f"'image': {{'driver': 'file', 'filename': '{base}'}}}}}}")
    theirs, mine = tmp_path / f"q.{fmt}", tmp_path / f"i.{fmt}"
    q = qemu_img("create", "-f", fmt, "-b", backing, "-F", fmt, str(theirs), "1M")
    i = qimg("create", "-f", fmt, "-b", backing, "-F", fmt, str(mine), "1M")
    _names_same(q, i, (str(theirs), str(mine)))
    saved = base.read_bytes()
    results = []
    for top, run in ((theirs, qemu_img), (mine, qimg)):
        base.write_bytes(saved)
        assert qemu_io("-c", "write -P 0x5a 0 64k", str(top)).returncode == 0
        results.append(run("commit", str(top)))
    _names_same(*results)
    assert results[0].returncode == 1


def test_check_repair_report_order_in_one_pipe(tmp_path, qemu_img, qemu_io):
    """iotest 271 ("Corrupted L2 entry, allocated subcluster"): with stdout and stderr in one
    pipe (2>&1), the repair report (stdout, buffered as qemu-img's stdio) comes after the
    second pass's messages (stderr), as qemu-img's output."""
    import subprocess

    from conftest import QIMG, oracle_command

    base, img = tmp_path / "base.raw", tmp_path / "t.qcow2"
    assert qemu_img("create", "-q", "-f", "raw", str(base), "128k").returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-F", "raw", "-b", "base.raw",
                    str(img)).returncode == 0
    assert qemu_io("-c", "write -P 1 4k 2k", str(img)).returncode == 0
    with open(img, "r+b") as f:  # the data cluster's offset made unaligned
        f.seek(_l2_offset(img) + 6)
        f.write(b"\x02")
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    shutil.copyfile(img, theirs)
    shutil.copyfile(img, mine)
    argv, env, exe = oracle_command("qemu-img")
    q = subprocess.run([exe, "check", "-r", "all", str(theirs)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=env)
    import os

    plain = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (as a script runs it)
    i = subprocess.run([*QIMG, "check", "-r", "all", str(mine)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=plain)
    assert (i.returncode, as_qemu(i.stdout.decode())) == (q.returncode, q.stdout.decode())
    assert "Data cluster is not properly aligned" in q.stdout.decode()


@pytest.mark.parametrize("name", [
    "driver=ssh,host=localhost,port=PORT,path=/foo",
    'json:{"driver": "ssh", "host": "localhost", "port": PORT, "path": "/foo"}',
])
@pytest.mark.parametrize("port", ["abc", "0x10", "99999999999999999999", "1.0", "", "0.42", "true", '"0"'])
def test_ssh_port_checked_as_qemu(monkeypatch, oracle, name, port):
    """iotest 162: the legacy ssh ``port`` option is a number for QEMU's option parser
    ("Parameter 'port' expects a number", "Value ... is too large"), and a port that is
    no decimal number cannot be used ("Use only numeric port value"); nothing is connected
    to but localhost's port 0 (refused)."""
    from cli_support import same_as_qemu

    if name.startswith("json:"):
        if port in ("abc", "0x10", ""):
            port = f'"{port}"'
    elif port in ("true", '"0"'):
        return
    args = (["--image-opts"] if not name.startswith("json:") else []) + [name.replace("PORT", port)]
    same_as_qemu(monkeypatch, oracle, "info", *args)


def test_ssh_server_port_must_be_decimal(monkeypatch, oracle):
    from cli_support import same_as_qemu

    same_as_qemu(monkeypatch, oracle, "info",
                 'json:{"driver": "ssh", "server": {"host": "localhost", "port": 0.5}, "path": "/foo"}')


SECRET0 = "secret,id=sec0,data=astrochicken"


def test_convert_to_preallocated_encrypted_qcow2_writes_zeroes(tmp_path, qemu_img, qimg):
    """iotest 188: a preallocated encrypted qcow2 image does not read as zeroes (its clusters
    decrypt the file's zeroes into noise, QEMU's qcow2_has_zero_init), so convert writes the
    source's zeroes too and the images compare identical."""
    src, dst = tmp_path / "o.qcow2", tmp_path / "e.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(src), "4M").returncode == 0
    r = qimg("convert", "-O", "qcow2", "--object", SECRET0, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=50,preallocation=metadata",
             str(src), str(dst))
    assert r.returncode == 0, r.stderr
    spec = "driver=qcow2,encrypt.key-secret=sec0,file.filename="
    c = qemu_img("compare", "--object", SECRET0, "--image-opts", spec + str(src), spec + str(dst))
    assert (c.returncode, c.stdout) == (0, "Images are identical.\n"), c.stderr


def test_create_over_an_encrypted_backing_file_needs_no_key(tmp_path, qemu_img, qimg):
    """iotest 198: the backing file is opened for its size and format only (QEMU's
    BDRV_O_NO_IO): an encrypted one needs no key."""
    base = tmp_path / "b.qcow2"
    # (made by qimg: qemu-img's key derivation timing fails under load, "Unable to get
    # accurate CPU usage")
    r = qimg("create", "-q", "-f", "qcow2", "--object", SECRET0, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=50", str(base), "4M")
    assert r.returncode == 0, r.stderr
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    args = ["-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2"]
    q = qemu_img("create", *args, str(theirs))
    i = qimg("create", *args, str(mine))
    _names_same(q, i, (str(theirs), str(mine)))
    assert q.returncode == 0
    assert theirs.read_bytes() == mine.read_bytes()


def test_commit_into_an_encrypted_backing_file_keeps_its_key(tmp_path, qemu_img, qemu_io, qimg):
    """iotest 198: commit reopens the backing file writable with the options it was opened
    with (``backing.encrypt.key-secret``), and the data lands there."""
    secret1 = "secret,id=sec1,data=furby"
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    opts = "encrypt.format=luks,encrypt.key-secret=sec{},encrypt.iter-time=50"
    assert qimg("create", "-q", "-f", "qcow2", "--object", SECRET0, "-o", opts.format(0), str(base),
                "4M").returncode == 0
    assert qimg("create", "-q", "-f", "qcow2", "--object", secret1, "-o", opts.format(1), "-b", "b.qcow2",
                "-F", "qcow2", str(top)).returncode == 0
    spec_base = f"driver=qcow2,file.filename={base},encrypt.key-secret=sec0"
    spec = (f"driver=qcow2,file.filename={top},encrypt.key-secret=sec1,backing.driver=qcow2,"
            f"backing.file.filename={base},backing.encrypt.key-secret=sec0")
    objs = ["--object", SECRET0, "--object", secret1]
    assert qemu_io(*objs, "--image-opts", "-c", "write -P 0x9 0 4M", spec).returncode == 0
    saved = base.read_bytes(), top.read_bytes()
    results = []
    for run in (qemu_img, qimg):
        base.write_bytes(saved[0])
        top.write_bytes(saved[1])
        results.append(run("commit", *objs, "--image-opts", spec))
        r = qemu_io("--object", SECRET0, "--image-opts", "-c", "read -P 0x9 0 4M", spec_base)
        assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, (run, r.stdout)
    _names_same(*results)


def test_data_file_given_as_open_options(tmp_path, qemu_img, qemu_io, qimg):
    """iotest 061: an image whose data file name is wrong (amend -o data_file=foo) opens with
    the data file given as the node's options (data-file.filename=...), and info, which reads
    metadata only, does not open the data file at all (QEMU: BDRV_O_NO_IO)."""
    img = tmp_path / "d.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={img}.data", str(img), "4M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 4k", str(img)).returncode == 0
    # (absolute: QEMU opens a relative data file name from its working folder, qimg from the
    # image's: a difference of its own, not this test's)
    assert qemu_img("amend", "-o", f"data_file={tmp_path}/foo", str(img)).returncode == 0
    spec = f"data-file.filename={img}.data,file.filename={img}"
    for args in (["info", str(img)], ["info", "--image-opts", spec], ["info", "--image-opts", "driver=qcow2," + spec],
                 ["check", str(img)], ["compare", "--image-opts", spec, "driver=qcow2," + spec]):
        _names_same(qemu_img(*args), qimg(*args))
    out = tmp_path / "x.raw"
    assert qimg("convert", "-O", "raw", "--image-opts", "driver=qcow2," + spec, str(out)).returncode == 0
    assert out.read_bytes()[:4096] == b"\1" * 4096


def test_relative_data_file_name_is_from_the_working_folder(tmp_path, monkeypatch, oracle):
    """QEMU creates and opens a relative data file name (data_file=x.data) from its working
    folder, not from the image's folder as a backing file name: so does qimg (it created the
    file in one place and looked for it in the other)."""
    from cli_support import as_qemu, run_qemu_version, run_qimg

    monkeypatch.setenv("QIMG_COMPAT", oracle)
    runs = {}
    for who in ("q", "i"):
        work = tmp_path / who
        (work / "sub").mkdir(parents=True)
        run = (lambda *a, cwd: run_qemu_version(oracle, *a, cwd=cwd)) if who == "q" else \
            (lambda *a, cwd: run_qimg(*a, cwd=cwd))
        runs[who] = [run("create", "-q", "-f", "qcow2", "-o", "data_file=x.data", "sub/d.qcow2", "1M", cwd=work),
                     run("check", "sub/d.qcow2", cwd=work),
                     run("check", "d.qcow2", cwd=work / "sub")]
        assert sorted(p.name for p in work.iterdir()) == ["sub", "x.data"]
    for q, i in zip(runs["q"], runs["i"], strict=True):
        assert (i.returncode, as_qemu(i.stdout), as_qemu(i.stderr)) == (q.returncode, q.stdout, q.stderr)


def test_amend_clears_the_data_file_name(tmp_path, qemu_img, qimg):
    """iotest 061: amend -o data_file= (empty) clears the data file's name in the header (the
    image then needs its data file given as an option); on an image without a data file the
    empty value is refused as any other."""
    img = tmp_path / "d.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={img}.data", str(img), "1M").returncode == 0
    assert qemu_img("amend", "-o", f"data_file={tmp_path}/foo", str(img)).returncode == 0
    plain = tmp_path / "p.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(plain), "1M").returncode == 0
    saved = img.read_bytes()
    outs = []
    for run in (qemu_img, qimg):
        img.write_bytes(saved)
        r = run("amend", "-o", "data_file=", "--image-opts", f"data-file.filename={img}.data,file.filename={img}")
        outs.append((r, img.read_bytes(), run("amend", "-o", "data_file=", str(plain))))
    _names_same(outs[0][0], outs[1][0])
    assert outs[0][1] == outs[1][1]
    _names_same(outs[0][2], outs[1][2])
    # info shows "data file raw" though the header names no data file now
    spec = f"data-file.filename={img}.data,file.filename={img}"
    for args in (["info", "--image-opts", spec], ["info", "--output=json", "--image-opts", spec]):
        _names_same(qemu_img(*args), qimg(*args))


# -- QEMU's null block drivers (plugins/null): iotests 150 and 162 ---------------------------------

NULL_ZEROES = "json:{ 'driver': 'null-co', 'size': 1048576, 'read-zeroes': true }"


@pytest.mark.parametrize("sparse", ["512", "0"])
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_convert_from_null_co(tmp_path, qemu_img, qimg, fmt, sparse):
    """iotest 150: a null-co node that reads zeroes converted with -S 512 leaves nothing
    allocated, with -S 0 the whole image is data (map's table); both tools' images map alike."""
    theirs, mine = tmp_path / f"q.{fmt}", tmp_path / f"i.{fmt}"
    q = qemu_img("convert", "-O", fmt, "-S", sparse, NULL_ZEROES, str(theirs))
    i = qimg("convert", "-O", fmt, "-S", sparse, NULL_ZEROES, str(mine))
    assert (i.returncode, i.stderr) == (q.returncode, q.stderr) == (0, "")
    for tool in (qemu_img, qimg):
        qm, im = tool("map", "--output=json", str(theirs)), tool("map", "--output=json", str(mine))
        assert im.stdout.replace(str(mine), "X") == qm.stdout.replace(str(theirs), "X")
    _names_same(qemu_img("map", str(theirs)), qimg("map", str(mine)), (str(theirs), str(mine)))


@pytest.mark.parametrize("args", [
    ["info", "null-co://"],
    ["info", "--output=json", "null-co://"],
    ["info", "null-aio://"],
    ["info", "-f", "null-co", "null-co://"],
    ["info", "json:{\"driver\": \"null-co\", \"size\": \"1M\", \"latency-ns\": 10}"],
    ["info", "--output=json", "json:{\"driver\": \"null-aio\", \"size\": \"4k\", \"read-zeroes\": true}"],
    # iotest 162: blkdebug's name over a null-co child whose config is a number
    ["info", "json:{\"driver\": \"blkdebug\", \"config\": 42, \"image.driver\": \"null-co\"}"],
    ["map", "--output=json", "json:{\"driver\": \"null-co\", \"size\": 1048576, \"read-zeroes\": true}"],
    ["compare", "null-co://", "json:{\"driver\": \"null-aio\", \"read-zeroes\": true}"],
    ["info", "null-co://foo"],
    ["info", "json:{\"driver\": \"null-co\", \"bogus\": 1}"],
    ["create", "-f", "raw", "null-co://", "1M"],
    ["convert", "-O", "raw", "null-co://", "null-aio://"],
    ["resize", "-f", "raw", "null-co://", "2G"],
    ["check", "null-co://"],
])
def test_null_co_as_qemu(tmp_path, monkeypatch, qemu_img, qimg, args):
    """The null-co and null-aio drivers: names, sizes, info and map of what they read, and what
    they refuse, word for word (iotests 150, 162)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "42").write_text("")  # blkdebug's config file "42" (empty: no rules)
    _names_same(qemu_img(*args), qimg(*args))


# -- QEMU's quorum driver (plugins/quorum): iotests 110 and vmdk's 059 ------------------------------

def _quorum(children, threshold, **extra):
    import json

    node = {"driver": "quorum", "vote-threshold": threshold, **extra,
            "children": [{"driver": "file", "filename": str(c)} for c in children]}
    return node, "json:" + json.dumps(node)


def test_quorum_under_a_format_has_no_folder_for_backing_names(tmp_path, monkeypatch, qemu_img, qimg):
    """iotest 110: a qcow2 image over quorum whose backing file name is relative: info shows it
    with "(cannot determine actual path)" (a quorum node has no folder)."""
    import json

    monkeypatch.chdir(tmp_path)
    assert qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "1M").returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2").returncode == 0
    shutil.copyfile(tmp_path / "t.qcow2", tmp_path / "t.copy")
    node, _ = _quorum([tmp_path / "t.qcow2", tmp_path / "t.copy"], 1)
    name = "json:" + json.dumps({"driver": "qcow2", "file": node})
    for args in (["info", name], ["info", "--output=json", name]):
        _names_same(qemu_img(*args), qimg(*args))
    assert "(cannot determine actual path)" in qimg("info", name).stdout


def test_vmdk_with_relative_extents_over_quorum_is_refused(tmp_path, monkeypatch, qemu_img, qimg):
    """vmdk's iotest 059: a monolithicFlat descriptor read through quorum cannot resolve its
    relative extent name: qemu-img's message, naming the quorum node."""
    import json

    monkeypatch.chdir(tmp_path)
    assert qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "t.vmdk", "1M").returncode == 0
    shutil.copyfile(tmp_path / "t.vmdk", tmp_path / "t.orig")
    node, _ = _quorum([tmp_path / "t.vmdk", tmp_path / "t.orig"], 1)
    name = "json:" + json.dumps({"driver": "vmdk", "file": node})
    q, i = qemu_img("info", name), qimg("info", name)
    _names_same(q, i)
    assert "Cannot generate a base directory for quorum nodes" in i.stderr


@pytest.mark.parametrize("case", [
    {"vote-threshold": 3},
    {"vote-threshold": 0},
    {"read-pattern": "x"},
    {"read-pattern": "fifo"},
    {"blkverify": True, "vote-threshold": 1},
    {"blkverify": True, "vote-threshold": 2, "rewrite-corrupted": True},
    {"children": []},
    {"children": ["node0"]},
    {"children": "sizes"},
])
def test_quorum_options_as_qemu(tmp_path, qemu_img, qimg, case):
    """quorum's options and what it refuses, word for word."""
    import json

    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    for f in (a, b):
        f.write_bytes(b"\1" * 65536)
    case = dict(case)
    if case.get("children") == "sizes":  # children of different lengths
        (tmp_path / "b.raw").write_bytes(b"\1" * 4096)
        del case["children"]
    node, _ = _quorum([a, b], case.pop("vote-threshold", 2))
    node.update(case)
    name = "json:" + json.dumps(node)
    for args in (["info", name], ["map", "--output=json", name]):
        _names_same(qemu_img(*args), qimg(*args))


@pytest.mark.parametrize("threshold", [1, 2])
@pytest.mark.parametrize("pattern", ["quorum", "fifo"])
def test_quorum_reads_the_voted_version(tmp_path, qemu_img, qemu_io, qimg, threshold, pattern):
    """Three raw children, the first differing in one cluster: the read is the version two of
    them hold (quorum), or the first child's (fifo); with two children that disagree and
    threshold 2, the read fails (EIO). convert's output and messages are qemu-img's."""
    a, b, c = (tmp_path / f"{x}.raw" for x in "abc")
    for f in (a, b, c):
        f.write_bytes(b"\1" * 131072)
    assert qemu_io("-f", "raw", "-c", "write -P 7 64k 4k", str(a)).returncode == 0
    for children in ([a, b, c], [a, b]):
        _, name = _quorum(children, threshold, **{"read-pattern": pattern})
        theirs, mine = tmp_path / "q.raw", tmp_path / "i.raw"
        q = qemu_img("convert", "-O", "raw", name, str(theirs))
        i = qimg("convert", "-O", "raw", name, str(mine))
        _names_same(q, i, (str(theirs), str(mine)))
        if q.returncode == 0:
            assert mine.read_bytes() == theirs.read_bytes()
        for f in (mine, theirs):
            f.unlink(missing_ok=True)


def test_quorum_writes_every_child(tmp_path, qemu_img):
    """A write through quorum reaches every child; rewrite-corrupted mends a child that lost a
    read's vote (qemu-img then finds all three identical)."""
    import qimg as lib

    kids = [tmp_path / f"{x}.raw" for x in "abc"]
    for f in kids:
        f.write_bytes(bytes(65536))
    node, _ = _quorum(kids, 2)
    with lib.open(dict(node), writable=True) as img:
        img.pwrite(4096, b"\x55" * 8192)
    for f in kids[1:]:
        assert qemu_img("compare", "-f", "raw", "-F", "raw", str(kids[0]), str(f)).returncode == 0
    with open(kids[0], "r+b") as f:
        f.seek(4096)
        f.write(b"\x66" * 512)
    node, _ = _quorum(kids, 2, **{"rewrite-corrupted": True})
    with lib.open(dict(node), writable=True) as img:
        assert img.pread(4096, 512) == b"\x55" * 512
    assert qemu_img("compare", "-f", "raw", "-F", "raw", str(kids[0]), str(kids[1])).returncode == 0


# -- blkdebug over a format node (core/qimg/formatnode.py): iotests 204 and 251 ------------------

@pytest.mark.parametrize("output", ["human", "json"])
def test_map_looks_through_blkdebug_over_a_format(tmp_path, qemu_img, qemu_io, qimg, output):
    """iotest 204: map of driver=blkdebug,image.driver=qcow2 (an overlay over a backing file,
    align=4k) is the qcow2 image's map, backing file included: qemu-img's map skips filters."""
    base, top = tmp_path / "t.qcow2.base", tmp_path / "t.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(base), "8M").returncode == 0
    assert qemu_io("-c", "write -P 1 0 8M", str(base)).returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=1M", "-b", str(base), "-F", "qcow2",
                    str(top)).returncode == 0
    assert qemu_io("-c", "write -P 2 0 1M", "-c", "write -z 3M 1M", "-c", "write -P 3 5M 2M", str(top)).returncode == 0
    opts = f"driver=blkdebug,image.driver=qcow2,image.file.driver=file,image.file.filename={top},align=4k"
    args = ["map", f"--output={output}", "--image-opts", opts]
    _names_same(qemu_img(*args), qimg(*args))
    for what in (["info", "--image-opts", opts], ["info", "--output=json", "--image-opts", opts]):
        _names_same(qemu_img(*what), qimg(*what))


def test_convert_salvage_through_blkdebug_over_a_format(tmp_path, qemu_img, qemu_io, qimg):
    """iotest 251: convert --salvage from blkdebug over a qcow2 image with block-status and read
    errors injected at some sectors: qemu-img's warnings in its order (block status twice: the
    count and the copy), the unreadable sectors zero, everything else copied (a sector whose
    status failed too)."""
    import json

    orig = tmp_path / "t.orig"
    assert qemu_img("create", "-q", "-f", "qcow2", str(orig), "8M").returncode == 0
    assert qemu_io("-c", "write -P 42 0 8M", str(orig)).returncode == 0
    status_fail = [2 * 1024 * 1024 + 8192, 5 * 1024 * 1024 + 512]
    read_fail = [4 * 1024 * 1024 - 65536, 5 * 1024 * 1024 + 512, 6 * 1024 * 1024, 6 * 1024 * 1024 + 512]
    rules = ([{"event": "none", "iotype": "block-status", "errno": 5, "sector": o // 512} for o in status_fail]
             + [{"event": "none", "iotype": "read", "errno": 5, "sector": o // 512} for o in read_fail])
    src = "json:" + json.dumps({"driver": "blkdebug", "inject-error": rules, "image": {
        "driver": "qcow2", "file": {"driver": "file", "filename": str(orig)}}})
    theirs, mine = tmp_path / "q.qcow2", tmp_path / "i.qcow2"
    q = qemu_img("convert", "--salvage", "-O", "qcow2", src, str(theirs))
    i = qimg("convert", "--salvage", "-O", "qcow2", src, str(mine))
    _names_same(q, i, (str(theirs), str(mine)))
    assert i.stderr.count("error while reading block status") == 4
    assert qemu_img("compare", str(theirs), str(mine)).returncode == 0
    r = qemu_io("-c", f"read -P 0 {read_fail[0]} 512", "-c", f"read -P 42 {status_fail[0]} 512", str(mine))
    assert "Pattern verification failed" not in r.stdout, r.stdout


def test_quorum_over_format_nodes(tmp_path, qemu_img, qemu_io, qimg):
    """quorum's children may be format nodes (qcow2 images): info, map and convert as qemu-img."""
    import json

    kids = [tmp_path / f"{x}.qcow2" for x in "ab"]
    for f in kids:
        assert qemu_img("create", "-q", "-f", "qcow2", str(f), "1M").returncode == 0
        assert qemu_io("-c", "write -P 9 64k 64k", str(f)).returncode == 0
    name = "json:" + json.dumps({"driver": "quorum", "vote-threshold": 2, "children": [
        {"driver": "qcow2", "file": {"driver": "file", "filename": str(f)}} for f in kids]})
    for args in (["info", name], ["map", "--output=json", name]):
        _names_same(qemu_img(*args), qimg(*args))
    theirs, mine = tmp_path / "q.raw", tmp_path / "i.raw"
    _names_same(qemu_img("convert", "-O", "raw", name, str(theirs)), qimg("convert", "-O", "raw", name, str(mine)),
                (str(theirs), str(mine)))
    assert mine.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("child", ["bad-version", "missing", "backing-missing", "bad-option", "blkdebug"])
def test_a_format_node_child_that_fails_is_named_once(tmp_path, monkeypatch, qemu_img, qimg, child):
    """A format node under another node (raw over qcow2, blkdebug over qcow2) that fails to open:
    its error follows the top image's name alone, as qemu-img's ("Could not open 'TOP': Unsupported
    qcow2 version 9"), not prefixed a second time with the child's own options."""
    monkeypatch.chdir(tmp_path)
    assert qemu_img("create", "-q", "-f", "qcow2", "q.qcow2", "1M").returncode == 0
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2", "top.qcow2").returncode == 0
    with open("q.qcow2", "r+b") as f:
        f.seek(4)
        f.write((9).to_bytes(4, "big"))
    raw = "driver=raw,file.driver=qcow2,file.file.filename="
    cmd = {"bad-version": ["info", "--image-opts", raw + "q.qcow2"],
           "missing": ["info", "--image-opts", raw + "nope.qcow2"],
           "backing-missing": ["info", "--image-opts", raw + "top.qcow2,file.backing.file.filename=nope"],
           "bad-option": ["info", "--image-opts", raw + "top.qcow2,file.bogus=1"],
           "blkdebug": ["info", 'json:{"driver": "raw", "file": {"driver": "blkdebug", "image": '
                                '{"driver": "qcow2", "file": {"driver": "file", "filename": "q.qcow2"}}}}']}[child]
    theirs, mine = qemu_img(*cmd), qimg(*cmd)
    assert theirs.returncode == 1
    _names_same(theirs, mine)


@pytest.mark.parametrize("fmt", ["bochs", "dmg", "cloop"])
@pytest.mark.parametrize("args", [[], ["in.raw", "out.img"]])
def test_convert_option_help_of_a_read_only_format(tmp_path, monkeypatch, qemu_img, qimg, fmt, args):
    """iotest 082: convert -O bochs -o help is refused as create's is ("Format driver 'bochs'
    does not support image creation"), not answered with an empty option list."""
    monkeypatch.chdir(tmp_path)
    cmd = ["convert", "-O", fmt, "-o", "help", *args]
    _names_same(qemu_img(*cmd), qimg(*cmd))


def test_raw_node_with_a_size_under_qcow2(tmp_path, qemu_img, qemu_io, qimg):
    """10.0's tests/qemu-img-close-errors: a qcow2 image over a raw format node with a size
    (json: 'file': {'driver': 'raw', 'size': N, 'file': {...}}) opens as qemu-img opens it; a
    write past the raw node's end is out of space (ENOSPC), as QEMU's raw driver says."""
    import errno
    import json

    import qimg as lib

    base = tmp_path / "t.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(base), "64M").returncode == 0
    assert qemu_io("-c", "write -P 5 0 64k", str(base)).returncode == 0
    size = base.stat().st_size
    node = {"driver": "qcow2", "file": {"driver": "raw", "size": size,
                                        "file": {"driver": "file", "filename": str(base)}}}
    name = "json:" + json.dumps(node)
    for args in (["map", "--output=json", name], ["check", name], ["compare", name, str(base)]):
        _names_same(qemu_img(*args), qimg(*args))
    with lib.open(node, writable=True) as img, pytest.raises(OSError) as e:
        img.pwrite(32 << 20, b"\1" * 4096)  # a new cluster past the raw node's end
    assert e.value.errno == errno.ENOSPC


@pytest.mark.parametrize("direct", ["on", "off"])
def test_map_of_unaligned_raw_with_direct_io(tmp_path, qemu_img, qemu_io, qimg, direct):
    """iotest 253: a raw image of 1 MiB - 1 byte whose last 64 KiB are data: with
    cache.direct=on QEMU's block status is aligned to O_DIRECT's request size, so the byte past
    the file's end joins the data run; without it, that byte is a zero run of its own."""
    img = tmp_path / "t.raw"
    size = 1024 * 1024 - 1
    assert qemu_img("create", "-q", "-f", "raw", str(img), str(size)).returncode == 0
    # written with O_DIRECT (qemu-io -t none, as the test's cache mode): the file grows to the
    # aligned end and is cut back
    assert qemu_io("-t", "none", "-f", "raw", "-c", f"write {size + 1 - 65536} 65535", str(img)).returncode == 0
    os.truncate(img, size)
    args = ["map", "--output=json", "--image-opts",
            f"driver=raw,file.driver=file,file.filename={img},cache.direct={direct}"]
    _names_same(qemu_img(*args), qimg(*args))


# -- iotest 301 (qcow v1): backing formats and a probed raw backing file ---------------------------

def test_commit_into_a_probed_raw_backing_file_keeps_its_type(tmp_path, monkeypatch, qemu_img, qimg):
    """iotest 301: a qcow (v1) image records no backing format, so its raw backing file is
    probed; committing data whose first sector is a qcow2 header into it is refused (EPERM:
    'Block job failed: Operation not permitted'), and the backing file stays raw."""
    monkeypatch.chdir(tmp_path)
    results = []
    for tool, tag in ((qemu_img, "q"), (qimg, "i")):
        base, img, q2 = f"{tag}.base", f"{tag}.qcow", f"{tag}.q2"
        (tmp_path / base).write_bytes(b"")
        os.truncate(tmp_path / base, 32 << 20)
        assert qemu_img("create", "-q", "-f", "qcow", "-b", base, "-F", "raw", img, "32M").returncode == 0
        assert qemu_img("create", "-q", "-f", "qcow2", q2, "32M").returncode == 0
        os.truncate(tmp_path / q2, 32 << 20)
        assert qemu_img("convert", "-n", "-f", "raw", "-O", "qcow", q2, img).returncode == 0
        results.append(tool("commit", "-f", "qcow", img))
        assert "file format: raw" in qemu_img("info", base).stdout
    _names_same(*results)
    assert results[1].returncode == 1 and "Operation not permitted" in results[1].stderr


@pytest.mark.parametrize("case", ["vmdk", "garbage", "-u garbage"])
def test_create_with_a_backing_format_that_does_not_fit(tmp_path, monkeypatch, qemu_img, qimg, case):
    """iotest 301: create -b base -F vmdk over a qcow base is the vmdk driver's own message (no
    file name before it), -F garbage an unknown driver; qcow with -u -F garbage refuses the
    format it cannot record before making anything (the old image stays)."""
    monkeypatch.chdir(tmp_path)
    assert qemu_img("create", "-q", "-f", "qcow", "t.base", "32M").returncode == 0
    *unsafe, bfmt = case.split()
    outs = []
    for tool in (qemu_img, qimg):
        assert qemu_img("create", "-q", "-f", "qcow", "-b", "t.base", "-F", "raw", "-u", "t.qcow", "32M").returncode == 0
        r = tool("create", "-f", "qcow", "-b", "t.base", "-F", bfmt, *unsafe, "t.qcow", "32M")
        outs.append((r, qemu_img("info", "t.qcow").stdout))
    _names_same(outs[0][0], outs[1][0])
    assert outs[0][1] == outs[1][1]
