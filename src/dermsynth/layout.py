"""The run folder's layout: the sub-folder each stage writes (read by the pipeline, which writes them, and by the
report, which reads them)."""

RUN_FOLDERS = {"prepare": "prepared", "train": "model", "finetune": "model", "generate": "synthetic",
               "audit": "audit", "validate": "validation", "domain_shift": "domain_shift",
               "reader_study": "reader_study"}
