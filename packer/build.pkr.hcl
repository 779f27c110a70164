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

  # On a cloud target the seal is the last step over the build's own SSH connection
  # (the qemu source seals in its shutdown_command instead). It ends with its self-check:
  # anything left fails the build here, before the AMI is made. It removes the build's
  # login, so Packer must not try to clean the script up afterwards (the seal removes it).
  provisioner "shell" {
    only             = ["amazon-ebs.aws"]
    script           = var.seal_script
    skip_clean       = true
    environment_vars = concat(["GOLDSMITH_BUILD_USER=${var.build_user}"], var.aws_seal_environment)
    execute_command  = "sudo -n sh -c '{{ .Vars }} {{ .Path }}'"
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
