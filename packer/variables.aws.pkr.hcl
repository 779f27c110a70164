# Variables of the amazon-ebs source (the `aws` and `twin` targets). goldsmith sets them
# from images.yml and the build (goldsmith.aws.packer_vars); every one has a default so
# `packer validate` passes for a build that only uses the qemu source.
#
# IMDSv2: Packer 1.6.6's amazon-ebs has no `metadata_options` (nor the AMI-level
# `imds_support`, which needs the amazon plugin >= 1.1 on Packer >= 1.7). goldsmith's
# guard (goldsmith.aws.imds) requires IMDSv2 on the builder instance while Packer runs;
# instances launched from the published AMIs get it from the account default
# (`aws ec2 modify-instance-metadata-defaults --http-tokens required`) until then.

variable "aws_region" {
  type        = string
  default     = "eu-west-1"
  description = "Region the builder runs in; the AMI is copied to the image's other regions after its specs pass."
}

variable "aws_endpoint_ec2" {
  type        = string
  default     = ""
  description = "EC2 endpoint override: the twin's URL; empty for real AWS."
}

variable "aws_source_ami_owners" {
  type        = list(string)
  default     = ["136693071363"]
  description = "Owners the source AMI must belong to (images.yml aws.source_ami.owners)."
}

variable "aws_source_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name pattern of the source AMI; the most recent match is used."
}

variable "aws_source_ami" {
  type        = string
  default     = ""
  description = "A layered image's source: its parent's proven AMI id (the filter is then by that id)."
}

variable "aws_instance_type" {
  type    = string
  default = "t3.small"
}

variable "aws_ami_name" {
  type        = string
  default     = ""
  description = "Name of the AMI; empty gives goldsmith-<image>-<UTC timestamp>."
}

variable "aws_root_device_name" {
  type        = string
  default     = "/dev/xvda"
  description = "Root device of the source AMI (Debian's is /dev/xvda): its launch volume is encrypted."
}

variable "aws_volume_size" {
  type    = number
  default = 8
}

variable "aws_volume_type" {
  type    = string
  default = "gp3"
}

variable "aws_encrypt_boot" {
  type        = bool
  default     = true
  description = "Encrypt the builder's root volume, so the AMI's snapshot is encrypted."
}

variable "aws_kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the encrypted volume; empty uses the account's default EBS key."
}

variable "aws_spot" {
  type        = bool
  default     = false
  description = "Run the builder on a spot instance at the current price."
}

variable "aws_subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the builder; empty uses the default VPC."
}

variable "aws_ssh_interface" {
  type        = string
  default     = ""
  description = "How Packer reaches the builder: empty (public or private IP), private_ip, or session_manager (needs aws_iam_instance_profile with SSM access)."
}

variable "aws_iam_instance_profile" {
  type    = string
  default = ""
}

variable "aws_ssh_source_cidrs" {
  type        = list(string)
  default     = ["127.0.0.1/32"]
  description = "Who may reach the builder's SSH port: goldsmith passes the builder's own address (/32). The default admits nobody, never 0.0.0.0/0."
}

variable "aws_ssh_username" {
  type    = string
  default = "admin"
}

variable "aws_ssh_keypair_name" {
  type        = string
  default     = ""
  description = "EC2 key pair goldsmith imported for this build; empty lets Packer make a temporary one."
}

variable "aws_ssh_private_key_file" {
  type        = string
  default     = ""
  description = "Private half of aws_ssh_keypair_name."
}

variable "aws_ssh_host" {
  type        = string
  default     = ""
  description = "Twin only: the stand-in VM's address; empty on real AWS (Packer uses the instance's)."
}

variable "aws_ssh_port" {
  type        = number
  default     = 22
  description = "Twin only: the stand-in VM's forwarded SSH port."
}

variable "aws_seal_environment" {
  type        = list(string)
  default     = []
  description = "Environment of the seal script on the builder. The twin sets GOLDSMITH_SEAL_POWEROFF=1: its stand-in VM powers itself off cleanly, as EC2's stop does, so its disk can be checked."
}

variable "aws_imds_gate_command" {
  type        = string
  default     = "echo 'aws_imds_gate_command is not set: IMDSv2 cannot be required on the builder' >&2; exit 1"
  description = "Packer's first step on the builder, run here: requires IMDSv2 on the instance named by $GOLDSMITH_INSTANCE_ID and waits until it is applied (goldsmith.aws.imds gate). Nothing runs on the builder before it passes."
}

variable "aws_inventory_script" {
  type        = string
  default     = "src/goldsmith/inventory.py"
  description = "goldsmith's inventory module (standard library only), which the seal runs on the builder after its self-check."
}

variable "aws_inventory_path" {
  type        = string
  default     = "inventory-live.json"
  description = "Where the builder's inventory is fetched to (the build's work folder)."
}

variable "aws_inventory_gate_command" {
  type        = string
  default     = "echo 'aws_inventory_gate_command is not set: the CVE gate cannot run on the builder inventory' >&2; exit 1"
  description = "Run here after the inventory is fetched: the image's CVE gate on it (goldsmith.targets.live gate). A failure fails the build before any AMI is made."
}

variable "aws_wait_delay_seconds" {
  type        = number
  default     = 15
  description = "Poll interval of Packer's AWS waiters."
}

variable "aws_wait_max_attempts" {
  type        = number
  default     = 240
  description = "Polls before Packer's AWS waiters give up: 240 x 15 s = 1 h, for slow snapshots."
}

# Provenance, on the builder instance, its volumes, the AMI and its snapshots.
variable "aws_image" {
  type    = string
  default = "unnamed"
}

variable "aws_git_sha" {
  type    = string
  default = "unknown"
}

variable "aws_fingerprint" {
  type    = string
  default = "unknown"
}

variable "aws_build_id" {
  type    = string
  default = "manual"
}

variable "aws_roles" {
  type        = string
  default     = ""
  description = "The playbook's roles, comma-separated."
}
