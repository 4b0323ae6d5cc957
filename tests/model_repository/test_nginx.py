"""samrt.model_repository.nginx: the NGINX configuration docs/replicas.md shows is the one the function writes,
and NGINX accepts it (tests/client/test_replicas.py runs it in front of three servers)."""

import os
import re
import shutil
import subprocess

import pytest

from samrt.model_repository.nginx import HASH_VARIABLE, nginx_config

REPLICAS_PAGE = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "replicas.md")).read()
GRPC = ["replica1:8001", "replica2:8001", "replica3:8001"]
HTTP = ["replica1:8000", "replica2:8000", "replica3:8000"]


def test_docs_show_the_generated_config():
    m = re.search(r"```nginx\n(.*?)```", REPLICAS_PAGE, re.S)
    assert m, "docs/replicas.md has no nginx block"
    assert m.group(1) == nginx_config(GRPC, HTTP)


def test_config_hashes_the_image_id_header():
    conf = nginx_config(GRPC)
    assert HASH_VARIABLE == "$http_x_samrt_image_id"
    assert f"hash {HASH_VARIABLE} consistent;" in conf and "grpc_pass grpc://samrt_grpc;" in conf
    assert "samrt_http" not in conf
    with pytest.raises(ValueError, match="no replicas"):
        nginx_config()


def test_nginx_accepts_it(tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (`make install` installs Debian's nginx)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(["127.0.0.1:18001"], ["127.0.0.1:18000"], "127.0.0.1:19001", "127.0.0.1:19000",
                                 prefix=str(tmp_path)))
    r = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
