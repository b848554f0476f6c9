"""Put on ``PYTHONPATH`` by tests that run the training program in two processes, so that they compare the ranks'
weights themselves instead of trusting the program's own "weights identical on all N ranks" line.

Python imports ``sitecustomize`` at start-up in every process. In the launcher's workers (``RANK`` is set) and only
where ``SSD300_TEST_WEIGHTS_DIR`` names a folder, the program's end-of-run comparison
(:func:`cv.detection.engine.distributed.check_same_weights`) first writes ``rank<RANK>.json`` there: the SHA-256 of
every tensor of the model's state dict, by name. A digest, not the tensors: SSD300's 100 MB per rank would cost
seconds to write and read, and equal digests mean equal bytes."""
import os

if "RANK" in os.environ and os.environ.get("SSD300_TEST_WEIGHTS_DIR"):
    import hashlib
    import json

    from cv.detection.engine import distributed

    _check_same_weights = distributed.check_same_weights

    def check_same_weights(model):
        digests = {name: hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()
                   for name, tensor in model.state_dict().items()}
        path = os.path.join(os.environ["SSD300_TEST_WEIGHTS_DIR"], f"rank{os.environ['RANK']}.json")
        with open(path, "w") as f:
            json.dump(digests, f)
        return _check_same_weights(model)

    distributed.check_same_weights = check_same_weights
