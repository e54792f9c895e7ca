"""Container images the components run in (built from images/; override with CODEPMP_IMAGE_CPU/_GPU at compile)."""

import os

CPU_IMAGE = os.environ.get("CODEPMP_IMAGE_CPU", "ghcr.io/codepmp/codepmp-cpu:0.1.0")
GPU_IMAGE = os.environ.get("CODEPMP_IMAGE_GPU", "ghcr.io/codepmp/codepmp-gpu:0.1.0")
