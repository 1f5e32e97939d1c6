# fedi-filter-proxy image. CPU torch by default; for a GPU build pass
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch torchvision
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY classifier ./classifier
COPY config ./config
RUN pip install --no-cache-dir . && mkdir -p /app/var
EXPOSE 8090 8091
CMD ["fedi-filter", "serve", "--config", "/app/config/default.yaml"]
