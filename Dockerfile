# syntax=docker/dockerfile:1
# Two stages: build with the Rust toolchain, run on a distroless base as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin prodguard

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/prodguard /usr/local/bin/prodguard
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/prodguard"]
CMD ["serve"]
