# vnet's static binary in an empty image.
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t vnet .
#   docker run --rm vnet version
#   docker run -d --name vnet-proxy -p 5000:5000/tcp -p 5000:5000/udp -p 5001:5001/udp -p 3478:3478/udp \
#     -v /etc/vnet:/etc/vnet:ro -v vnet-state:/var/lib/vnet vnet proxy --key-file /etc/vnet/net.key \
#     --state-dir /var/lib/vnet --api 127.0.0.1:7777
# A host with TAP ports needs --cap-add NET_ADMIN --device /dev/net/tun (and the host's network, --network host,
# for its VMs' TAP devices to be on the host).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" -o /vnet .

FROM scratch
COPY --from=build /vnet /vnet
USER 65534:65534
ENTRYPOINT ["/vnet"]
