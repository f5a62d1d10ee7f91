package encap

// RefSum gives the external tests (encap_test, which cannot be internal:
// it imports testbed, which imports encap through config) the reference
// checksum the internal tests use.
var RefSum = refSum
