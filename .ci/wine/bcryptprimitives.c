/* A stand-in for Windows' bcryptprimitives.dll under Wine 8, which lacks it.
 *
 * Rust's standard library on Windows draws random bytes (for HashMap seeds)
 * from ProcessPrng, exported by bcryptprimitives.dll since Windows 10.
 * This DLL exports ProcessPrng and fills the buffer through RtlGenRandom
 * (SystemFunction036 in advapi32), which Wine has. Built by .ci/wine.sh
 * with mingw-w64 and copied into the Wine prefix's system32; only the test
 * runs under Wine use it.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
