"""`imgclf serve`: a real uvicorn process on 127.0.0.1, driven over real HTTP."""

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from helpers import PROJECT_ROOT, tool_env
from imgclf.inference import load_model, predict_bytes
from service import free_port, running_service
from test_inference import png_header_only
from tiny_model import CLASSES, IMAGE_SIZE, photo_bytes, save_tiny_model

MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def service(model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("service") / "service.log"
    # A long batching window makes concurrent requests meet in one batch.
    with running_service(model_path, log, "--max-upload-mb", str(MAX_UPLOAD_MB),
                         "--max-batch-size", "8", "--max-wait-ms", "200") as url:
        yield {"url": url, "log": log}


def post_files(url, files, **params):
    return httpx.post(f"{url}/predict", files=files, params=params, timeout=60)


def expected_probabilities(model_path, data):
    loaded = load_model(model_path)
    return predict_bytes(loaded.predictor, [data], image_size=IMAGE_SIZE)[0]


def test_health_and_metadata(service):
    health = httpx.get(f"{service['url']}/health").json()
    assert health["status"] == "ok"
    metadata = httpx.get(f"{service['url']}/metadata").json()
    assert metadata["classes"] == CLASSES
    assert metadata["image_size"] == IMAGE_SIZE
    assert metadata["backbone"] == "test_conv"
    assert metadata["max_upload_bytes"] == MAX_UPLOAD_MB * 1024 * 1024


def test_predict_matches_shared_function(service, model_path):
    data = photo_bytes(11)
    response = post_files(service["url"], {"file": ("photo.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["filename"] == "photo.jpg"
    got = np.array([prediction["probabilities"][name] for name in CLASSES])
    np.testing.assert_allclose(got, expected_probabilities(model_path, data), atol=1e-6)
    assert len(prediction["top"]) == 3
    assert prediction["top"][0]["class"] == CLASSES[int(np.argmax(got))]


def test_predict_several_files(service):
    files = [("file", (f"{i}.png", photo_bytes(i, format="PNG"), "image/png")) for i in range(3)]
    response = post_files(service["url"], files, top=1)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == ["0.png", "1.png", "2.png"]
    assert all(len(p["top"]) == 1 for p in predictions)


def test_concurrent_requests_are_batched(service, model_path):
    images = [photo_bytes(100 + i) for i in range(12)]

    def send(data):
        return post_files(service["url"], {"file": ("x.jpg", data, "image/jpeg")})

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(send, images))

    loaded = load_model(model_path)
    expected = predict_bytes(loaded.predictor, images, image_size=IMAGE_SIZE, batch_size=1)
    for response, row in zip(responses, expected):
        assert response.status_code == 200, response.text
        got = response.json()["predictions"][0]["probabilities"]
        np.testing.assert_allclose([got[name] for name in CLASSES], row, atol=1e-6)
    assert httpx.get(f"{service['url']}/health").json()["largest_batch"] > 1


@pytest.mark.parametrize("data, content_type, status, words", [
    (b"plain text, not an image", "image/jpeg", 415, "not an image"),
    (photo_bytes(5), "text/plain", 415, "not an image type"),
    (photo_bytes(6, size=256)[:3000], "image/jpeg", 400, "cannot be decoded"),
    (png_header_only(10_000, 10_000), "image/png", 413, "pixels"),
    (png_header_only(60_000, 60_000), "image/png", 413, "decompression bomb"),
])
def test_bad_upload_status(service, data, content_type, status, words):
    response = post_files(service["url"], {"file": ("upload", data, content_type)})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_missing_file_field_is_422(service):
    response = post_files(service["url"], {"image": ("a.jpg", photo_bytes(1), "image/jpeg")})
    assert response.status_code == 422
    assert "multipart/form-data field named 'file'" in response.json()["detail"]


def test_large_body_rejected_by_length(service):
    data = b"\xff\xd8" + bytes(MAX_UPLOAD_MB * 1024 * 1024)
    response = post_files(service["url"], {"file": ("big.jpg", data, "image/jpeg")})
    assert response.status_code == 413
    assert "--max-upload-mb" in response.json()["detail"]


def test_large_chunked_body_rejected_while_reading(service):
    # A generator body is sent chunked, without Content-Length.
    boundary = "imgclf-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(2 * MAX_UPLOAD_MB * 16):
            yield bytes(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{service['url']}/predict", content=body(), timeout=60,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["detail"]


def test_healthy_after_bad_requests(service):
    post_files(service["url"], {"file": ("x", b"junk", "image/jpeg")})
    assert httpx.get(f"{service['url']}/health").json()["status"] == "ok"
    response = post_files(service["url"], {"file": ("ok.jpg", photo_bytes(8), "image/jpeg")})
    assert response.status_code == 200


def test_openapi_describes_predict(service):
    schema = httpx.get(f"{service['url']}/openapi.json").json()
    assert "/predict" in schema["paths"]
    assert httpx.get(f"{service['url']}/docs").status_code == 200


def test_logs_are_json_lines(service):
    import json

    httpx.get(f"{service['url']}/health", headers={"x-request-id": "log-check-1"})
    entries = [json.loads(line) for line in service["log"].read_text().splitlines()
               if line.startswith("{")]
    requests = [e for e in entries if e.get("request_id") == "log-check-1"]
    assert requests and requests[0]["path"] == "/health"
    assert requests[0]["status"] == 200
    assert any(e["message"] == "model loaded" for e in entries)


def test_model_without_metadata_refused(model_path, tmp_path):
    shutil.copy(model_path, tmp_path / "model.keras")
    result = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "serve", "--model", str(tmp_path / "model.keras"),
         "--port", str(free_port())],
        env=tool_env(PYTHONPATH=str(PROJECT_ROOT / "src")), capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'metadata.json'} not found" in result.stderr
