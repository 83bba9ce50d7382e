# syntax=docker/dockerfile:1
#
# task-broker container image.
#   docker build \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg SOURCE="https://github.com/<org>/task-broker" \
#     -t registry.example.com/platform/task-broker:0.1.0 .
#
# Two stages: the build stage installs every dependency, generates the protobuf types, compiles
# TypeScript and writes the SBOM, then keeps only the runtime dependencies; the runtime stage is
# distroless Node.js 26 (no shell, no package manager) running as the unprivileged user 65532.
#
# Both base images are pinned by digest: a rebuild uses exactly these bases, whatever the tags
# point to now. To take a newer release (distroless images get security fixes; do it
# regularly), look up the tag's current digest, the "Digest:" of the multi-platform index,
#   docker buildx imagetools inspect node:26-trixie-slim
#   docker buildx imagetools inspect gcr.io/distroless/nodejs26-debian13:nonroot
# and replace it below: in the FROM line and, for the runtime image, in the base.digest label.

FROM node:26-trixie-slim@sha256:930557a230abacbc3f4fd9b8648abf8f4bee1e17cb72195dcdfb2f709bc85b33 AS build
WORKDIR /src
ENV NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

# Dependencies first, in their own layer, so a source change does not reinstall them.
# --ignore-scripts: `prepare` (the build) would run here before the sources are copied in.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts

COPY tsconfig.json tsconfig.build.json ./
COPY proto/ proto/
COPY src/ src/
COPY bench/ bench/
COPY bin/ bin/
COPY migrations/ migrations/
COPY scripts/sbom.mjs scripts/sbom.mjs
# gen (protobuf types into src/gen) and tsc into dist/. Then only the runtime dependencies stay,
# without the embedded PostgreSQL (PGlite: its WebAssembly build is the largest dependency):
# in the image, serve and migrate run on PostgreSQL only, and without a database URL they stop
# with "this image has no embedded PostgreSQL (PGlite); set --database-url or
# TASK_BROKER_DATABASE_URL". src/store/database.ts imports PGlite only when there is no URL.
# The SBOM is written from the pruned lockfile: it lists exactly the packages in the image.
RUN npm run build \
 && npm pkg delete "dependencies.@electric-sql/pglite" "dependencies.kysely-pglite-dialect" \
 && npm prune --omit=dev --ignore-scripts \
 && node scripts/sbom.mjs /src/sbom.cdx.json \
 && npm cache clean --force

FROM gcr.io/distroless/nodejs26-debian13:nonroot@sha256:f7e3539249fa844f7019255d3ed1acb5faf626006607a602f8a24d59f0a97c6c AS runtime

# OCI image annotations. VERSION follows package.json; pass the others at build time (above).
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="task-broker" \
      org.opencontainers.image.description="SPIFFE-aware workload identity token broker: task-scoped, certificate-bound tokens that die with their task" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/nodejs26-debian13:nonroot" \
      org.opencontainers.image.base.digest="sha256:f7e3539249fa844f7019255d3ed1acb5faf626006607a602f8a24d59f0a97c6c"

WORKDIR /app
ENV NODE_ENV=production

# Everything the CLI reads at run time: compiled code, the launcher, the .proto files (loaded
# by grpc), the SQL migrations, runtime dependencies and package.json (the package root
# marker), and the SBOM of those dependencies.
COPY --from=build --chown=0:0 /src/package.json ./package.json
COPY --from=build --chown=0:0 /src/node_modules/ ./node_modules/
COPY --from=build --chown=0:0 /src/dist/src/ ./dist/src/
COPY --from=build --chown=0:0 /src/bin/ ./bin/
COPY --from=build --chown=0:0 /src/proto/ ./proto/
COPY --from=build --chown=0:0 /src/migrations/ ./migrations/
COPY --from=build --chown=0:0 /src/sbom.cdx.json ./sbom.cdx.json

# Files owned by root, process run as 65532: the broker cannot modify its own code.
USER 65532:65532
# gRPC over mTLS; HTTP ops port (JWKS, /healthz, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/nodejs/bin/node", "--enable-source-maps", "/app/bin/task-broker.js"]
CMD ["serve"]
