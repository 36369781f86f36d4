# The sluice binary in an empty image: no libc, no shell, no certificates, nothing but the
# binary. It needs none of them: it is statically linked, resolves host names itself from
# /etc/hosts (which the container runtime provides) and DNS, and TLS reads the CA file it is given.
#
#   scripts/build-static.sh                    # builds and checks target/static/sluice
#   docker build -t sluice .
#   docker run --rm sluice consume -b kafka:9092 -t clicks -o beginning -e
#   docker run --rm -v $PWD/jobs:/jobs -v sluice-state:/state sluice run /jobs/clickstream.toml
#
# (No Docker engine runs where sluice is built and tested; scripts/build-static.sh --chroot runs
# the same binary in an empty chroot holding only it and /etc/hosts instead.)
FROM scratch
COPY target/static/sluice /sluice
ENTRYPOINT ["/sluice"]
