"""``json:{...}`` names read as QEMU reads them (qimg.qemujson): which error a broken text
reports depends on QEMU's lexer (a byte no token continues is a ``stray`` error at once), its
streamer (the parser sees an object only once its brackets balance, so a lexer error anywhere
inside wins) and its parser (the first error stands). Against qemu-img 7.2 and 10.0."""
from __future__ import annotations

import pytest
from cli_support import compare
from conftest import as_qemu

BROKEN = [
    # lexer: the token so far and the byte that fits no token
    '{driver:qcow2,file:{driver:file,filename:q2.qcow2}}', '{"driver":"qcow2","file":{"filename":q2.qcow2}}',
    '{"a":@}', '{"a": 1.5.3}', '{"a": -}', '{"a": 01}', '{"a":1e}', '{"a":1.}', '{"a":-', '{"a":"x',
    '{"a":%d}', '{Driver:1}', '{"a":"\x01"}',
    # parser
    '{"a":1x}', '{"a": 0x10}', '{\'a\': "b"x}', '{"a"}', '{"a":"b",}', '{"a":"b" "c"}', '{"a":[1,]}',
    '{"a":nul}', '{"a":tru}', '{"a":1,"a":2}', '{"a":"\\u12G4"}', '{"a":"\\q"}', '{"a":"\\ud800"}',
    '{"a":"\\ud83dx"}', '{"a" 1}', '{1:2}', '{"a":[1 2]}', '{"a":[1,}', '{,}', '{"a":1,}', ']', '[}', '{',
    # one value, and only one
    '{"a":1}}', '{"a":1} x', '{"a":1} true', '{"a":1} "x', '{"a":1} {', '1 2', '   ', '', 'null', '[1,2]',
    # nesting
    '[' * 1025, '{"a":' * 1024 + '1' + '}' * 1024, '[' * 1024 + ']' * 1024,
]
GOOD = [
    '{"a":true}', '{"a":"\\ud83d\\ude00"}', '{"a":"\u00e9"}', '{"a":\t"b"}', "{'a':'b\"'}", '{"a":"\\u0000"}',
    '{"a":{}}', '{"a":[]}', '{"a":1.5e3,"b":-0,"c":18446744073709551616}',
]


@pytest.mark.parametrize("text", BROKEN + GOOD, ids=range(len(BROKEN + GOOD)))
def test_json_name_errors(tmp_path, text):
    compare(tmp_path, "info", "json:" + text)


def test_json_name_stray_byte(tmp_path, qemu_img, qimg):
    """A byte of a UTF-8 sequence is a token of its own: the message holds that byte alone."""
    name = 'json:{"a":1\u00e9}'
    q, m = qemu_img("info", name), qimg("info", name)
    assert (m.returncode, m.stdout, as_qemu(m.stderr)) == (q.returncode, q.stdout, q.stderr)
    assert q.stderr.endswith("stray '\ufffd'\n")


def test_json_name_opens(tmp_path):
    compare(tmp_path, "create", "-q", "-f", "raw", "r.raw", "1M")
    compare(tmp_path, "info", "json:{'driver':'raw','file':{'driver':'file','filename':'r.raw'}}")
    compare(tmp_path, "info", 'json:{"driver":"raw","file":{"driver":"file","filename":"r.raw"}} ')
    compare(tmp_path, "info", 'json:{"file":{"driver":"file","filename":"r.raw"},"driver":"raw","size":512}')
