# The amazon-ebs source: an EC2 instance from the newest source AMI, provisioned by the
# shared build, then imaged. Written for Packer 1.6.6 (and valid on newer Packer with the
# amazon plugin, see plugins/). The AMI is built in one region only: goldsmith copies it
# to the image's other regions after the specs passed (no `ami_regions` here).

locals {
  aws_tags = {
    "Name"                  = "goldsmith-${var.aws_image}"
    "goldsmith:image"       = var.aws_image
    "goldsmith:git-sha"     = var.aws_git_sha
    "goldsmith:fingerprint" = var.aws_fingerprint
    "goldsmith:build-id"    = var.aws_build_id
    "goldsmith:roles"       = var.aws_roles
  }
  # The source of an image that is not layered: found by name, of the expected kind.
  aws_source_by_name = {
    name                = var.aws_source_ami_name
    architecture        = "x86_64"
    root-device-type    = "ebs"
    virtualization-type = "hvm"
  }
  aws_ami_name = var.aws_ami_name != "" ? var.aws_ami_name : "goldsmith-${var.aws_image}-${formatdate("YYYYMMDDhhmmss", timestamp())}"
}

source "amazon-ebs" "aws" {
  region              = var.aws_region
  custom_endpoint_ec2 = var.aws_endpoint_ec2

  # A layered image starts from its parent's proven AMI, by its id alone (aws_source_ami);
  # any other from the newest available AMI whose name matches, among the catalogue's
  # owners, of the architecture and kind the build expects.
  source_ami_filter {
    owners      = var.aws_source_ami != "" ? ["self"] : var.aws_source_ami_owners
    most_recent = true
    filters = merge(
      { state = "available" },
      var.aws_source_ami != "" ? { image-id = var.aws_source_ami } : local.aws_source_by_name,
    )
  }

  # Packer takes either an on-demand instance_type or the spot fleet's types, not both.
  instance_type        = var.aws_spot ? null : var.aws_instance_type
  spot_price           = var.aws_spot ? "auto" : ""
  spot_instance_types  = var.aws_spot ? [var.aws_instance_type] : []
  subnet_id            = var.aws_subnet_id
  iam_instance_profile = var.aws_iam_instance_profile
  # A builder whose Packer died (a cancelled CI job) and that is then shut down from
  # inside terminates instead of lingering stopped. Packer's own stop (StopInstances)
  # is not affected, and the seal never powers an EC2 builder off (only the twin's
  # stand-in VM, which moto does not see), so the AMI is still made from a stopped one.
  shutdown_behavior = "terminate"

  # The launch volume itself is encrypted, so the AMI's snapshot is born encrypted
  # (no extra copy at the end, as `encrypt_boot` would make).
  launch_block_device_mappings {
    device_name = var.aws_root_device_name
    volume_size = var.aws_volume_size
    volume_type = var.aws_volume_type
    # gp3's baseline: Packer 1.6.6 insists on an explicit throughput for gp3.
    throughput            = var.aws_volume_type == "gp3" ? 125 : 0
    iops                  = var.aws_volume_type == "gp3" ? 3000 : 0
    encrypted             = var.aws_encrypt_boot
    kms_key_id            = var.aws_kms_key_id
    delete_on_termination = true
  }

  # Every resource carries the build id from its creation (the reaper finds them by it):
  # the instance and its volumes at launch; the AMI and its snapshots once CreateImage
  # has finished (Packer 1.6.6 cannot tag them earlier; goldsmith.aws.reaper finds an
  # interrupted CreateImage's AMI through the tagged instance). Packer 1.6.6 cannot tag
  # its temporary security group: the reaper reaches it through the tagged instance too.
  ami_name        = local.aws_ami_name
  ami_description = "goldsmith ${var.aws_image} ${var.aws_git_sha} (build ${var.aws_build_id})"
  tags            = local.aws_tags
  snapshot_tags   = local.aws_tags
  run_tags        = local.aws_tags
  run_volume_tags = local.aws_tags
  spot_tags       = var.aws_spot ? local.aws_tags : null

  # Generous waiters: AMI and snapshot creation routinely outlast the SDK's defaults.
  aws_polling {
    delay_seconds = var.aws_wait_delay_seconds
    max_attempts  = var.aws_wait_max_attempts
  }

  communicator                          = "ssh"
  ssh_username                          = var.aws_ssh_username
  ssh_interface                         = var.aws_ssh_interface
  ssh_keypair_name                      = var.aws_ssh_keypair_name
  ssh_private_key_file                  = var.aws_ssh_private_key_file
  ssh_host                              = var.aws_ssh_host
  ssh_port                              = var.aws_ssh_port
  ssh_timeout                           = "15m"
  ssh_clear_authorized_keys             = true
  temporary_security_group_source_cidrs = var.aws_ssh_source_cidrs
}
