/*
 * A libbarkeep example for programs started by `barkeep exec`: take the
 * inherited slices, map the first one and write to it. No connection to
 * the daemon: barkeep exec holds the leases while this program runs.
 *
 *   cc -o inherited examples/c/inherited.c $(pkg-config --cflags --libs barkeep)
 *   barkeep exec --slice sim0:0:0x10000:4K -- ./inherited 0x40 3237998592
 *
 * Writes the 32-bit VALUE at OFFSET in the first slice. Exit 0 on
 * success, 1 with the library's message on failure.
 */
#include <barkeep.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what)
{
    int code = barkeep_last_error_code();
    const char *slug = barkeep_error_slug(code);
    fprintf(stderr, "inherited: %s: %s [%s %d]\n", what, barkeep_last_error_message(),
            slug ? slug : "?", code);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: barkeep exec --slice ... -- %s OFFSET VALUE\n", argv[0]);
        return 2;
    }
    uint64_t offset = strtoull(argv[1], NULL, 0);
    uint32_t value = (uint32_t)strtoul(argv[2], NULL, 0);

    barkeep_lease leases[8];
    size_t count = 0;
    if (barkeep_inherited(leases, 8, &count) != 0)
        return fail("barkeep_inherited");
    if (count == 0) {
        fprintf(stderr, "inherited: no slices: run me through `barkeep exec --slice ...`\n");
        return 1;
    }
    for (size_t i = 0; i < count && i < 8; i++)
        printf("slice %zu: lease %s, %s BAR%" PRIu32 " 0x%" PRIx64 "+0x%" PRIx64 ", fd %d\n", i,
               leases[i].id, leases[i].device, leases[i].bar, leases[i].offset,
               leases[i].length, leases[i].fd);

    barkeep_mapping *map;
    if (barkeep_inherited_map(0, 0, leases[0].length, &map) != 0)
        return fail("barkeep_inherited_map");
    if (barkeep_write32(map, offset, value) != 0)
        return fail("barkeep_write32");
    printf("wrote 0x%08" PRIx32 " at 0x%" PRIx64 ", revoked: %d\n", value, offset,
           barkeep_inherited_is_revoked(0));
    barkeep_unmap(map);
    return 0;
}
