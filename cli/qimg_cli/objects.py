"""``--object help`` and ``--object TYPE,help`` as each qemu-img prints them (observed output,
as data): the user creatable object types of its build, and each type's properties. qimg itself
creates ``secret`` objects (qimg.secrets) and TLS credentials (``tls-creds-x509``, ``-psk``,
``-anon``: qimg.tlscreds); the help answers as qemu-img does."""
from __future__ import annotations

#: each type's properties, as ``name=<type>`` (sorted, as qemu-img prints them)
PROPERTIES: dict[str, str] = {
    "authz-list": "policy=<QAuthZListPolicy> rules=<QAuthZListRule>",
    "authz-list-file": "filename=<string> refresh=<bool>",
    "authz-simple": "identity=<string>",
    "main-loop": "aio-max-batch=<int> thread-pool-max=<int> thread-pool-min=<int>",
    "pr-manager-helper": "path=<string>",
    "secret": "data=<string> file=<string> format=<QCryptoSecretFormat> iv=<string> keyid=<string>",
    "secret_keyring": "format=<QCryptoSecretFormat> iv=<string> keyid=<string> serial=<int32_t>",
    "thread-context": "cpu-affinity=<int> node-affinity=<int>",
    "throttle-group": ("limits=<ThrottleLimits> x-bps-read-max-length=<int> x-bps-read-max=<int> x-bps-read=<int> "
                       "x-bps-total-max-length=<int> x-bps-total-max=<int> x-bps-total=<int> x-bps-write-max-length=<int> "
                       "x-bps-write-max=<int> x-bps-write=<int> x-iops-read-max-length=<int> x-iops-read-max=<int> "
                       "x-iops-read=<int> x-iops-size=<int> x-iops-total-max-length=<int> x-iops-total-max=<int> "
                       "x-iops-total=<int> x-iops-write-max-length=<int> x-iops-write-max=<int> x-iops-write=<int>"),
    "tls-cipher-suites": "dir=<string> endpoint=<QCryptoTLSCredsEndpoint> priority=<string> verify-peer=<bool>",
    "tls-creds-anon": "dir=<string> endpoint=<QCryptoTLSCredsEndpoint> priority=<string> verify-peer=<bool>",
    "tls-creds-psk": ("dir=<string> endpoint=<QCryptoTLSCredsEndpoint> priority=<string> username=<string> "
                      "verify-peer=<bool>"),
    "tls-creds-x509": ("dir=<string> endpoint=<QCryptoTLSCredsEndpoint> passwordid=<string> priority=<string> "
                       "sanity-check=<bool> verify-peer=<bool>"),
}

#: the types each profile's qemu-img lists (10.0 has no tls-cipher-suites)
TYPES: dict[str, list[str]] = {
    "7.2": list(PROPERTIES),
    "10.0": [t for t in PROPERTIES if t != "tls-cipher-suites"],
}


def help_text(text: str) -> str | None:
    """What ``--object TEXT`` prints when it asks for help (None: not a help request). A
    bare ``help`` or ``?`` anywhere asks; the type is the implied first word or ``qom-type=``;
    an unknown or missing type lists the types."""
    from qimg.compat import name
    from qimg.options import split_options

    items = split_options(text)
    if not any(value is None and key in ("help", "?") for key, value in items) or any(not k for k, _ in items):
        return None  # not help, or an empty piece (its error first)
    qom_type = None
    if items and items[0][1] is None and items[0][0] not in ("help", "?"):
        qom_type = items[0][0]
    for key, value in items:
        if key == "qom-type" and value is not None:
            qom_type = value
    types = TYPES[name()]
    if qom_type in types:
        return f"{qom_type} options:\n" + "".join(f"  {p}\n" for p in PROPERTIES[qom_type].split())
    return "List of user creatable objects:\n" + "".join(f"  {t}\n" for t in types)
