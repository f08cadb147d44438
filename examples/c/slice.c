/*
 * A libbarkeep example: connect, print the daemon's status, acquire a
 * slice, map it, write and read through the mapping, show what a refused
 * access looks like, release.
 *
 *   cc -o slice examples/c/slice.c $(pkg-config --cflags --libs barkeep)
 *   ./slice /run/barkeep/barkeep.sock sim0:0:0x10000:4K
 *
 * SOCKET may be "-" for $BARKEEP_SOCKET (else /run/barkeep/barkeep.sock).
 * Writes 0xfeedf00d at slice offset 0x10 and 0x0123456789abcdef at 0x20
 * (through the raw pointer). Exit 0 on success, 1 with the library's
 * message on failure.
 */
#include <barkeep.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int fail(const char *what)
{
    int code = barkeep_last_error_code();
    const char *slug = barkeep_error_slug(code);
    fprintf(stderr, "slice: %s: %s [%s %d]\n", what, barkeep_last_error_message(),
            slug ? slug : "?", code);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET|- DEVICE:BAR:OFFSET:LENGTH[:ro][:wc]\n", argv[0]);
        return 2;
    }
    const char *socket = strcmp(argv[1], "-") == 0 ? NULL : argv[1];

    barkeep_client *client = barkeep_connect(socket);
    if (!client)
        return fail("barkeep_connect");

    barkeep_status status;
    if (barkeep_get_status(client, &status) != 0)
        return fail("barkeep_get_status");
    printf("daemon %s, protocol %" PRIu32 ", %" PRIu32 " device(s), page size %" PRIu64
           ", mmap %s\n",
           status.daemon_version, status.protocol_version, status.devices, status.page_size,
           (status.capabilities & BARKEEP_CAP_MMAP) ? "yes" : "no");

    barkeep_lease lease;
    if (barkeep_acquire_spec(client, argv[2], &lease) != 0) {
        int rc = fail("barkeep_acquire_spec");
        barkeep_disconnect(client);
        return rc;
    }
    printf("lease %s on %s BAR%" PRIu32 " 0x%" PRIx64 "+0x%" PRIx64 " fd %d %s\n", lease.id,
           lease.device, lease.bar, lease.offset, lease.length, lease.fd,
           lease.access == BARKEEP_ACCESS_RW ? "rw" : "ro");

    barkeep_mapping *map;
    if (barkeep_map(client, &lease, 0, lease.length, &map) != 0)
        return fail("barkeep_map");

    /* Checked accesses: bounds, alignment, read-only and revocation. */
    if (barkeep_write32(map, 0x10, 0xfeedf00d) != 0)
        return fail("barkeep_write32");
    uint32_t back = 0;
    if (barkeep_read32(map, 0x10, &back) != 0)
        return fail("barkeep_read32");
    printf("read back 0x%08" PRIx32 "\n", back);

    /* Direct accesses through the pointer, as a driver's macros would. */
    volatile uint64_t *regs = barkeep_mapping_ptr(map);
    regs[0x20 / 8] = UINT64_C(0x0123456789abcdef);

    /* Past the end of the mapping: refused, not performed. */
    int rc = barkeep_write32(map, barkeep_mapping_len(map), 1);
    printf("write past the end: %s (%d)\n", barkeep_error_slug(rc), rc);
    if (rc != BARKEEP_ERR_OUT_OF_RANGE)
        return 1;

    printf("revoked: %d\n", barkeep_is_revoked(client, &lease));
    barkeep_unmap(map);
    if (barkeep_release(client, &lease) != 0)
        return fail("barkeep_release");
    printf("released, fd now %d\n", lease.fd);
    barkeep_disconnect(client);
    return 0;
}
