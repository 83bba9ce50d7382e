# syntax=docker/dockerfile:1
#
# task-broker container image.
#   docker build -t registry.example.com/platform/task-broker:0.1.0 .
#
# Two stages: the build stage installs every dependency, generates the protobuf types and
# compiles TypeScript, then drops the dev dependencies; the runtime stage is distroless Node.js 20
# (no shell, no package manager) running as the unprivileged user 65532. Pin both base images by
# digest in your own build (FROM image:tag@sha256:…) so a rebuild is reproducible.

FROM node:20-bookworm-slim AS build
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
# gen (protobuf types into src/gen) and tsc into dist/, then keep only runtime dependencies.
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts \
 && npm cache clean --force

FROM gcr.io/distroless/nodejs20-debian12:nonroot AS runtime
WORKDIR /app
ENV NODE_ENV=production

# Everything the CLI reads at run time: compiled code, the launcher, the .proto files (loaded
# by grpc), the SQL migrations, runtime dependencies and package.json (the package root marker).
COPY --from=build --chown=0:0 /src/package.json ./package.json
COPY --from=build --chown=0:0 /src/node_modules/ ./node_modules/
COPY --from=build --chown=0:0 /src/dist/src/ ./dist/src/
COPY --from=build --chown=0:0 /src/bin/ ./bin/
COPY --from=build --chown=0:0 /src/proto/ ./proto/
COPY --from=build --chown=0:0 /src/migrations/ ./migrations/

# Files owned by root, process run as 65532: the broker cannot modify its own code.
USER 65532:65532
# gRPC over mTLS; HTTP ops port (JWKS, /healthz, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/nodejs/bin/node", "--enable-source-maps", "/app/bin/task-broker.js"]
CMD ["serve"]
