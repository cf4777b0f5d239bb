package netback

// Feature keys this backend publishes in its xenstore directory at probe
// (the set Linux xen-netback's netback_probe writes, minus what it does not
// implement: no ctrl ring, no XDP headroom).
var backendFeatures = []struct{ key, val string }{
	{"feature-sg", "1"},
	{"feature-gso-tcpv4", "1"},
	{"feature-gso-tcpv6", "1"},
	{"feature-ipv6-csum-offload", "1"},
	{"feature-rx-copy", "1"},
	{"feature-rx-flip", "0"},
	{"feature-multicast-control", "1"},
	{"feature-dynamic-multicast-control", "1"},
	{"feature-split-event-channels", "1"},
}

// frontFeatures is what the frontend said it can do (read at connect).
type frontFeatures struct {
	rxCopy        bool // request-rx-copy: mandatory (netfront refuses flip)
	sg            bool // feature-sg: rx packets may span several slots
	gsoTCPv4      bool // feature-gso-tcpv4: rx packets may carry a TCPv4 GSO extra
	gsoTCPv6      bool // feature-gso-tcpv6
	ipv6Csum      bool // feature-ipv6-csum-offload
	noCsumOffload bool // feature-no-csum-offload: rx packets must carry full checksums
	mcastControl  bool // request-multicast-control: filter rx multicast by its list
}

// gsoMask has bit GSOTypeTCPv4/GSOTypeTCPv6 set for the GSO types the
// frontend accepts on its rx ring.
func (f frontFeatures) gsoMask() uint8 {
	var m uint8
	if !f.sg {
		return 0
	}
	if f.gsoTCPv4 {
		m |= 1 << GSOTypeTCPv4
	}
	if f.gsoTCPv6 && f.ipv6Csum { // TSO6 needs IPv6 checksum offload (as NETIF_F_TSO6 needs NETIF_F_IPV6_CSUM)
		m |= 1 << GSOTypeTCPv6
	}
	return m
}
