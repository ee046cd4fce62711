"""qimg-http: the ``http`` and ``https`` protocols (QEMU's curl driver). Registers names and
prefixes only; the driver (and urllib3) load when such an image is opened."""
from qimg.plugins import hookimpl


@hookimpl
def qimg_register_protocols(registry) -> None:
    registry.add_protocol("http", "qimg_http.protocol:HttpProtocol", prefixes=("http",))
    registry.add_protocol("https", "qimg_http.protocol:HttpsProtocol", prefixes=("https",))
