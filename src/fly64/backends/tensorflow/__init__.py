"""TensorFlow/Keras backend: the PINN and the supervised baseline as Keras 3 models.

`job.run_job(spec)` trains one model and writes its bundle, and `bundle.load_bundle(source)`
loads a TensorFlow bundle for inference. Importing this package imports no framework.
Its modules import TensorFlow, so import them only in a process that does not need
PyTorch, or after the PyTorch side: TensorFlow imported before torchvision, Lightning or
pty-chi crashes the process.
"""
