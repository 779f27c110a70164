# The local target: a QEMU VM on this machine, booted from the base disk through its
# own boot loader. The build credential reaches the guest as an SMBIOS OEM string.
source "qemu" "local" {
  vm_name          = "${var.image_name}.qcow2"
  iso_url          = var.base_image
  iso_checksum     = var.base_checksum
  disk_image       = true
  use_backing_file = false
  format           = "qcow2"
  disk_size        = var.disk_size
  disk_compression = true
  # zstd: about the size zlib gives, written several times faster (QEMU 5.1 or later
  # reads it). Packer passes these to its qemu-img convert calls.
  qemu_img_args {
    convert = ["-o", "compression_type=zstd"]
  }
  # Blocks the seal frees (apt caches, lists) are trimmed, so they do not ship.
  disk_discard       = "unmap"
  disk_detect_zeroes = "unmap"
  output_directory   = var.output_directory
  accelerator        = var.accelerator
  cpus               = var.cpus
  memory             = var.memory
  headless           = true
  boot_wait          = "1s"
  net_device         = "virtio-net"
  disk_interface     = "virtio"
  qemuargs = [
    ["-smbios", var.build_credential],
    ["-smbios", var.cloud_init_seed],
  ]
  # A cloud image has cloud-init, not goldsmith's credential unit: it reads the build
  # user from a NoCloud seed that Packer serves here (see goldsmith.cloudinit).
  http_directory = var.http_directory
  http_port_min  = var.http_port
  http_port_max  = var.http_port

  communicator         = "ssh"
  ssh_username         = var.build_user
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "10m"
  # Through goldsmith's proxy, Packer's first try waits until the machine answers.
  ssh_proxy_host = var.ssh_proxy_host
  ssh_proxy_port = var.ssh_proxy_port
  host_port_min  = var.ssh_host_port
  host_port_max  = var.ssh_host_port
  # No boot command to type: Packer does not connect to the VM's display (Packer 1.6
  # still gives QEMU a VNC display, on the loopback address).
  disable_vnc = true

  # The seal removes the build user, so it is the shutdown: it runs as root over
  # the build's open connection and powers the machine off itself.
  shutdown_command = "sudo -n env GOLDSMITH_SEAL_POWEROFF=1 GOLDSMITH_BUILD_USER=${var.build_user} sh /tmp/goldsmith-seal.sh"
  shutdown_timeout = "5m"
}
