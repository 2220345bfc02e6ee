/* Floor for the boot benchmark: the smallest possible /init. It tells the host it runs by
 * writing one byte to the console, then powers the VM off. QEMU start -> this byte is the
 * cost of a raw boot of the kernel to init, with none of msb's work. */
#include <fcntl.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    int fd = open("/dev/console", O_WRONLY);
    if (fd >= 0) write(fd, "@MSB-INIT@\n", 11);
    reboot(RB_POWER_OFF);
    return 0;
}
