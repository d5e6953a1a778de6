"""Training a char-RNN, one module per stage of the pipeline (data flows down the list):

    1 sources      text in: files, directories, stdin, the built-in Shakespeare corpus
    2 prepare      text → ids: newlines, documents, the two streaming passes
      dataset      the prepared-data directory: vocabulary, format, atomic writing, loading
    3 batches      ids → column batches for truncated backpropagation through time
    4 recipe       TrainConfig and presets, the optimizer, the learning-rate schedule
      step         one optimizer step: precision, gradient averaging, the weight average,
                   the allocator and thread count it runs with
      loop         the Trainer: steps, evaluations, checkpoints
      checkpoints  what a run's checkpoints hold, and how a run resumes from one
      finetune     starting from a trained checkpoint: its network, merged vocabulary, weights
      run          the run directory, progress on screen, when to stop (limits, signals)
      distributed  data parallelism over torchrun's processes
    5 evaluate     validation loss, and scoring a checkpoint on any text
      inference    the `sample` command: a checkpoint's text to stdout

The command line (`python -m training`): cli (the command map, `prepare`, `eval`) and
cli_train (`train`).
"""
