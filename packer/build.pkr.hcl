# One build for every target: the playbook, then the specs against the live machine,
# then the seal. A failing spec fails the build before anything is sealed or saved.
build {
  name    = "goldsmith"
  sources = ["source.qemu.local", "source.amazon-ebs.aws"]

  # On a cloud target nothing runs on the builder before IMDSv2 is required and applied
  # there: Packer 1.6.6 has no `metadata_options` (see goldsmith.aws.imds).
  provisioner "shell-local" {
    only             = ["amazon-ebs.aws"]
    environment_vars = ["GOLDSMITH_INSTANCE_ID=${build.ID}"]
    inline           = [var.aws_imds_gate_command]
  }

  provisioner "ansible" {
    playbook_file    = var.playbook
    command          = var.ansible_playbook
    user             = var.build_user
    use_proxy        = false
    ansible_env_vars = var.ansible_env_vars
    extra_arguments  = ["--extra-vars", "ansible_python_interpreter=/usr/bin/python3"]
  }

  provisioner "shell-local" {
    environment_vars = [
      "GOLDSMITH_SPEC_HOST=${build.Host}",
      "GOLDSMITH_SPEC_PORT=${build.Port}",
      "GOLDSMITH_SPEC_USER=${var.build_user}",
    ]
    inline = [var.spec_command]
  }

  provisioner "file" {
    source      = var.seal_script
    destination = "/tmp/goldsmith-seal.sh"
  }

  # On a cloud target the seal also reads what the machine holds (goldsmith.inventory,
  # uploaded here), once its self-check has passed: there is no disk to mount before the
  # AMI exists (see goldsmith.targets.live).
  provisioner "file" {
    only        = ["amazon-ebs.aws"]
    source      = var.aws_inventory_script
    destination = "/tmp/goldsmith-inventory.py"
  }

  # On a cloud target the seal is the last step over the build's own SSH connection
  # (the qemu source seals in its shutdown_command instead). It ends with its self-check:
  # anything left fails the build here, before the AMI is made. It removes the build's
  # login, so Packer must not try to clean the script up afterwards (the seal removes it).
  provisioner "shell" {
    only       = ["amazon-ebs.aws"]
    script     = var.seal_script
    skip_clean = true
    environment_vars = concat(
      ["GOLDSMITH_BUILD_USER=${var.build_user}", "GOLDSMITH_INVENTORY=/tmp/goldsmith-inventory.py"],
      var.aws_seal_environment,
    )
    execute_command = "sudo -n sh -c '{{ .Vars }} {{ .Path }}'"
  }

  # The sealed machine's inventory, fetched over the build's own connection, then removed
  # from the builder (the twin's stand-in powers off once it is gone). It lives on /run, a
  # tmpfs: nothing of it is in the image.
  provisioner "file" {
    only        = ["amazon-ebs.aws"]
    direction   = "download"
    source      = "/run/goldsmith-inventory/inventory.json"
    destination = var.aws_inventory_path
  }

  provisioner "shell" {
    only            = ["amazon-ebs.aws"]
    remote_folder   = "/run/goldsmith-inventory"
    skip_clean      = true
    execute_command = "sh {{ .Path }}"
    inline          = ["rm -f /run/goldsmith-inventory/inventory.json"]
  }

  # The image's CVE gate on that inventory, run here: a failing gate fails the build
  # before the builder is stopped, so no AMI is made.
  provisioner "shell-local" {
    only   = ["amazon-ebs.aws"]
    inline = [var.aws_inventory_gate_command]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = false
    custom_data = {
      image       = var.image_name
      git_sha     = var.git_sha
      build_id    = var.build_id
      fingerprint = var.fingerprint
      roles       = var.roles
    }
  }
}
