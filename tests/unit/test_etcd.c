/* test_etcd.c — etcd_parse_url: the --store forms accepted and refused, and
 * the part each refusal names. Pure: contacts no server. */
#include <string.h>

#include "check.h"
#include "etcd.h"

static void accepts(const char *url, const char *want)
{
    char out[256], err[256] = "";
    int rc = etcd_parse_url(url, out, sizeof out, err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0)
        CHECK_STR(out, want);
    else
        fprintf(stderr, "  %s refused: %s\n", url, err);
}

/* Refused, with an error that contains each of the given parts. */
static void refuses(const char *url, const char *part1, const char *part2)
{
    char out[256] = "untouched", err[256] = "";
    int rc = etcd_parse_url(url, out, sizeof out, err, sizeof err);
    CHECK(rc == -1);
    CHECK(err[0] != '\0');
    CHECK_STR(out, "untouched");
    if (part1 && !strstr(err, part1)) {
        CHECK(!"error names the part");
        fprintf(stderr, "  %s: error \"%s\" lacks \"%s\"\n", url, err, part1);
    }
    if (part2 && !strstr(err, part2)) {
        CHECK(!"error names the part");
        fprintf(stderr, "  %s: error \"%s\" lacks \"%s\"\n", url, err, part2);
    }
}

static void test_accepted_forms(void)
{
    accepts("etcd://127.0.0.1:2379", "127.0.0.1:2379");
    accepts("etcd://a:1,b:2,c:65535", "a:1,b:2,c:65535");
    accepts("etcd://etcd-1.example.com:2379", "etcd-1.example.com:2379");
    accepts("etcd://[::1]:2379", "[::1]:2379");
    accepts("etcd://[fe80::1]:1,10.0.0.2:2379", "[fe80::1]:1,10.0.0.2:2379");
    accepts("ETCD://h:2379", "h:2379");
}

static void test_refused_forms(void)
{
    refuses("127.0.0.1:2379", "not a URL", "127.0.0.1:2379");
    refuses("http://127.0.0.1:2379", "\"http\"", "not supported");
    refuses("https://h:1", "\"https\"", NULL);
    refuses("etcd://", "no endpoint", NULL);
    refuses("etcd://h:1,,h:2", "empty endpoint", NULL);
    refuses("etcd://h:1,", "empty endpoint", NULL);
    refuses("etcd://h", "no port", "\"h\"");
    refuses("etcd://h:", "port", "1-65535");
    refuses("etcd://h:x1", "port \"x1\"", NULL);
    refuses("etcd://h:0", "port \"0\"", NULL);
    refuses("etcd://h:65536", "port \"65536\"", NULL);
    refuses("etcd://h:99999999999999999999", "1-65535", NULL);
    refuses("etcd://:2379", "empty host", NULL);
    refuses("etcd://h:2379/v3", "a path", NULL);
    refuses("etcd://h:2379/", "a path", NULL);
    refuses("etcd://h:2379?x=1", "a query", NULL);
    refuses("etcd://user:pw@h:2379", "userinfo", NULL);
    refuses("etcd://::1:2379", "brackets", NULL);
    refuses("etcd://[]:2379", "IPv6", NULL);
    refuses("etcd://[::1]", "no port", NULL);
    refuses("etcd://[::1]x:1", "junk", NULL);
    refuses("etcd://h h:1", "bad character", NULL);
}

static void test_output_too_small(void)
{
    char out[8], err[256];
    CHECK(etcd_parse_url("etcd://127.0.0.1:2379", out, sizeof out, err, sizeof err) == -1);
    CHECK(strstr(err, "too long") != NULL);
}

int main(void)
{
    test_accepted_forms();
    test_refused_forms();
    test_output_too_small();
    return check_report("test_etcd");
}
