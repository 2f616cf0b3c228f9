/* Debian's libseccomp.a is built against glibc with _FORTIFY_SOURCE, so it calls
 * __fprintf_chk, which musl lacks. This is the whole of what the static musl link needs. */
#include <stdarg.h>
#include <stdio.h>

int __fprintf_chk(FILE *stream, int flag, const char *format, ...)
{
    va_list ap;
    int n;
    (void)flag;
    va_start(ap, format);
    n = vfprintf(stream, format, ap);
    va_end(ap);
    return n;
}
