"""A TensorFlow-Serving-compatible model server for this project's SavedModels.

A stand-in for ``tensorflow_model_server`` (the ``tensorflow/serving`` image) on machines
without Docker, so the gateway, the clients and the load tests run against the same API on
the same ports. Usage::

    python -m serving.modelserver --port=8500 --rest_api_port=8501 \\
        --model_name=fashion_mnist --model_base_path=$PWD/models/fashion_mnist \\
        --monitoring_config_file=serving/config/monitoring.config \\
        --enable_batching --batching_parameters_file=serving/config/batching.config

    curl localhost:8501/v1/models/fashion_mnist
    curl -d '{"instances": [[[[0.0], ...]]]}' localhost:8501/v1/models/fashion_mnist:predict

What it implements, like TF Serving:

- flags: ``--port``, ``--rest_api_port``, ``--model_name``, ``--model_base_path``,
  ``--model_config_file`` (+ ``--model_config_file_poll_wait_seconds``),
  ``--file_system_poll_wait_seconds``, ``--monitoring_config_file``, ``--enable_batching``,
  ``--batching_parameters_file``, ``--enable_model_warmup``, ``--prefer_tflite_model``,
  ``--rest_api_num_threads``,
  ``--rest_api_timeout_in_ms``; config files are TF Serving's text protos (serving/config/).
- gRPC ``tensorflow.serving.PredictionService`` (``Predict``, ``GetModelMetadata``) and
  ``ModelService`` (``GetModelStatus``, ``HandleReloadConfigRequest``) from
  ``tensorflow-serving-api``, with TF Serving's status codes.
- REST ``/v1/models/...`` status, metadata and ``:predict`` (row and columnar formats), TF
  Serving's JSON shapes, ``{"error": ...}`` bodies and HTTP codes.
- versions: version policies (latest N / all / specific) and labels, new and removed version
  folders noticed within the poll interval, a new version loaded before the old one is
  unloaded, and an unloading version kept until its in-flight requests finish.
- warmup records (``assets.extra/tf_serving_warmup_requests``, predict logs) before a version
  is AVAILABLE; server-side batching (`serving.batching`); Prometheus metrics on the REST port
  under TF Serving's names; graceful SIGTERM (stop accepting, finish in-flight, exit 0).

What it does not: ``Classify``/``Regress``/``MultiInference`` and the REST ``:classify`` /
``:regress`` verbs (UNIMPLEMENTED / 501), platforms other than ``tensorflow``, ``allowed_batch_sizes``
padding (accepted in batching.config, not applied), TLS, ``--grpc_channel_arguments``, the
``:tensorflow:core:*`` metrics, and TF Serving's C++ speed: it is Python around
``tf.saved_model.load``, adequate for this small model on a developer machine, not a
replacement for the real server in production.

Differences and extensions: ``--model_base_path`` together with ``--model_config_file``
replaces the base path of a single-model config, so the container's ``models.config`` works
outside a container (tensorflow_model_server ignores it there); ``--model_name`` with
``--model_config_file`` is refused (exit 2) instead of ignored; ``--rest_api_port`` defaults to
8501 as in the ``tensorflow/serving`` image (the binary's default is 0, off); unknown
non-``/v1/`` REST paths answer a JSON 404; ``--rest_api_timeout_in_ms`` bounds only the wait in the batching queue
(a running model call is not interrupted); a REST body over 64 MiB, or holding more than
2,000,000 JSON arrays, is refused with 413 and ``{"error": ...}`` before it is read or
parsed; number flags refuse ``inf``/``nan``. Extra flags: ``--grpc_max_threads`` (a fixed
pool, all started with the server, as TF Serving's),
``--shutdown_grace_seconds``, ``--log_level``; the ``:convserve:modelserver:batch_size``
histogram shows how requests were batched.
"""
