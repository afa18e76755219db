/* Picks the BTF-derived kernel type dump for the target architecture. */
#if defined(__TARGET_ARCH_x86)
#include "vmlinux_x86.h"
#else
#error "portsleuth: no vmlinux header for this architecture; see bpf/include/README.md"
#endif
