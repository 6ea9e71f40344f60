"""edgepipe's device agent: measures one TFLite model on the board it runs on and answers with one JSON result.

It needs only the Python standard library, numpy and a TFLite runtime: ``ai_edge_litert``, ``tflite_runtime`` or
TensorFlow's ``tf.lite`` (found by itself, in that order unless the job names one). edgepipe sends it to the board
as ONE file, a zip application of ``device_agents/`` (``edgepipe.deployment.agent`` builds it); nothing else of
edgepipe is installed there.

The modules, in the order a job meets them:

- ``cli``: the commands (``run``, ``probe``, ``version``) and the result of a run
- ``protocol``: the job and result formats (documented there), their versions, the job's checks
- ``board``: what the board is and how it runs right now
- ``supervisor``: the sandboxed child processes (time and memory limits) and how their ends are classified
- ``sandbox``: the child's entry point: everything that touches the model happens there
- ``runtime``: importing a TFLite runtime, loading the model, the classified failures of both
- ``timing``: the timed loops, alone and paired against a baseline
- ``evaluate``: accuracy (or error) on the evaluation data, and agreement with the host's outputs
- ``profile``: the per-operator profile by windows of the model
"""
