"""The baseline for bench/load_test.py: FastAPI calling `model.predict` once per request.

It decodes and checks uploads like `imgclf serve` (same function, same status
codes, same body limit), so the comparison isolates the inference strategy:
one `model.predict` per request on FastAPI's thread pool, with no batching.

Run: PYTHONPATH=src python bench/naive_server.py --model models/model.keras --port 8001
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile

from imgclf.inference import ImageError, image_array, load_metadata
from imgclf.serve import STATUS_FOR_IMAGE_ERROR, BodySizeLimit


def create_naive_app(model_path: Path, max_upload_bytes: int) -> FastAPI:
    import keras

    import imgclf.model  # noqa: F401  registers the Preprocess layer

    metadata = load_metadata(model_path)
    model = keras.models.load_model(model_path, safe_mode=True, compile=False)
    app = FastAPI(title="imgclf naive baseline")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(file: Annotated[UploadFile, File()]) -> dict:
        data = file.file.read()
        try:
            array = image_array(data, metadata.image_size, **metadata.conversion())
        except ImageError as error:
            raise HTTPException(STATUS_FOR_IMAGE_ERROR[error.kind], str(error)) from None
        probabilities = model.predict(array[None], verbose=0)[0]  # (n_classes,)
        return {"probabilities": dict(zip(metadata.classes, map(float, probabilities), strict=True))}

    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.keras"))
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    args = parser.parse_args()
    app = create_naive_app(args.model, int(args.max_upload_mb * 1024 * 1024))
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
